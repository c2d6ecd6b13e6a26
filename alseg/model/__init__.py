"""The segmentation model: network, loss, training, inference; ``load_dynunet`` for other projects."""

from __future__ import annotations

__all__ = ["load_dynunet"]


def __getattr__(name: str):
    if name == "load_dynunet":
        # lazy: importing alseg.model.<any submodule> runs this package first; torch and MONAI load only when asked
        from alseg.model.load import load_dynunet

        return load_dynunet
    raise AttributeError(f"module 'alseg.model' has no attribute {name!r}")
