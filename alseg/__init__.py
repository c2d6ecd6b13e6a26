"""alseg: active learning for medical image segmentation on a self-configuring pipeline."""

__version__ = "0.1.0"
