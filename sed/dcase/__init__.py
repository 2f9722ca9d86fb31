"""What a DCASE submission reports besides scores: energy (codecarbon), complexity, the submission package."""
