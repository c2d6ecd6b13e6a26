"""alseg: active learning for medical image segmentation on a self-configuring pipeline."""

from alseg.runtime import tune_process

tune_process()  # before torch is imported: see alseg/runtime.py

__version__ = "0.1.0"
