"""The model: loading and identity (loading), prompts as the model sees them (prompts), and the
in-place layer gate that hard- or soft-skips layers (gating)."""
