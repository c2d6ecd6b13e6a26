"""alseg: active learning for medical image segmentation on a self-configuring pipeline.

Importing alseg changes nothing in the process; the command line (``alseg.cli.main``) tunes the
CPU runtime for its own workloads, see :mod:`alseg.runtime`.
"""

__version__ = "0.1.0"
