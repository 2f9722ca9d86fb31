"""Sound event detection training pipeline (DCASE Task 4 style)."""

import os

# OpenMP threads that spin while waiting turn the GRU's many small matrix products into a stall (measured:
# 40x slower per step) whenever the cores are shared, e.g. with DataLoader workers on a small CPU machine.
# Sleeping waits cost nothing measurable when the cores are free. Must be set before torch loads OpenMP;
# an explicit user setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Large CPU tensors in transparent huge pages (PyTorch's allocator madvises blocks of 2 MiB and more): a fresh
# block is then faulted in 2 MiB at a time, not 4 KiB. glibc maps and unmaps every block above 32 MiB, so a CPU
# training step faults its large activations in anew each time: on a 2-core AMD CPU that was a third of a DESED
# mean-teacher step (7.7 -> 5.5 s at batch 48; the numbers are the same, peak memory within 2 %). Read at the
# first large allocation; the kernel must allow it (/sys/kernel/mm/transparent_hugepage/enabled: madvise or
# always). An explicit user setting wins (0: off).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
