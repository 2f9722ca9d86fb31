"""Training pieces: augmentation (mixup, FilterAugment, frame shift, masks), the mean teacher's EMA, losses, learning-rate and ramp-up
schedules."""
