"""Evaluation: quality against the full model (quality), layer importance (importance), held-out
validation (validation), multiple choice (multiple_choice), the quality-vs-speed frontier
(frontier), drafter measurements (lossless), and timing (timing, throughput)."""
