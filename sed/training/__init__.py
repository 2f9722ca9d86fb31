"""Training pieces: augmentation (mixup, masking), the mean teacher's EMA, losses, learning-rate and ramp-up
schedules."""
