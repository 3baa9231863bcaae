"""The model: loading and identity (loading, sources), prompts as the model sees them (prompts), skip
plans (plan) and the engine that runs every forward under per-row plans (engine)."""
