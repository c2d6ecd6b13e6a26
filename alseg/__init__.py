"""alseg: active learning for medical image segmentation on a self-configuring pipeline."""

import os

# OpenMP threads that spin while they wait make a CPU training step ~10x slower as soon as
# another process shares the cores (measured: 3.2 s vs 0.36 s per step on 2 busy cores, see
# README "Performance notes"). Passive waiting costs nothing measurable on idle cores. Set before
# torch is imported; a user's own OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
