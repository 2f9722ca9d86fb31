"""Using a trained detector: inference on audio files, export, and the exported model's runtime."""
