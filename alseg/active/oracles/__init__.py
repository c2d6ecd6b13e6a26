"""Oracles: who provides the masks of selected items.

``simulated`` reveals the ground truth of the preprocessed case (the paper's simulation).
``files`` writes a package per case for a person (the case's image in its own geometry, the
model's pre-segmentation, the region to annotate; :mod:`alseg.active.annotation`) and imports
the label map saved for each case, keeping only the selected items' voxels. ``patches``
exports each item as a NIfTI patch with its world geometry and imports one mask per item.
Both validate what comes back; a wrong file is rejected with one line and the others are kept.

Every oracle follows :class:`~alseg.active.oracles.base.Oracle` and is registered by name in
:mod:`~alseg.active.oracles.registry`. Masks land in a
:class:`~alseg.active.oracles.labels.LabelStore`, which is what the data module trains from.
"""
