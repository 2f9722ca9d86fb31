"""Evaluation pieces: post-processing (median filter, thresholds), sliding windows, the per-model scoring
function, metrics (PSDS, F1), output files and plots."""
