"""The shared training loop, EMA, checkpoints, and teacher training."""
