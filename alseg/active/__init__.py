"""The active-learning core: a run's settings, its workspace (plan, cache, split, pool), the loop
and its Lightning callback, the oracles, the run directory, and experiments built on them.

Import the modules themselves (``alseg.active.loop``, ``alseg.active.rundir``, ...): this package
imports nothing on its own, so reading a run directory does not load torch.
"""
