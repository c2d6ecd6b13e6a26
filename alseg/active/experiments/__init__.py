"""Experiments built from runs: the strategy x seed grid (``compare``) and the redundancy check."""
