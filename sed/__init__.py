"""Sound event detection training pipeline (DCASE Task 4 style)."""

import os

# OpenMP threads that spin while waiting turn the GRU's many small matrix products into a stall (measured:
# 40x slower per step) whenever the cores are shared, e.g. with DataLoader workers on a small CPU machine.
# Sleeping waits cost nothing measurable when the cores are free. Must be set before torch loads OpenMP;
# an explicit user setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
