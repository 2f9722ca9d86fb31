"""Sound event detection training pipeline (DCASE Task 4 style)."""

__version__ = "0.1.0"
