"""ais: adaptive layer skipping for small instruction-tuned LLMs."""
