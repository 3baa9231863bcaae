"""Decoding: plain greedy decoding under a static plan (greedy), the routed decoder that reuses the
router's layers (routed), and lossless speculative decoding with its drafters (speculative)."""
