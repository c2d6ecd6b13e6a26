"""The plan files: pydantic models that every later stage reads.

``fingerprint.json`` records what the data is; ``plans.json`` records what alseg decided
to do with it (nnU-Net v2's rules, see ``alseg/plans/planner.py``). Both are versioned and
validated on load, so a hand-edited plan that no longer makes sense fails with one line
naming the field instead of deep inside training.

Axis convention: every per-axis list is in the *transposed* array order used for training
(``transpose_forward`` applied to the (z, y, x) order of the files), as in nnU-Net v2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from alseg.atomic import atomic_write_text
from alseg.errors import AlsegError

__all__ = [
    "FINGERPRINT_FILE",
    "PLANS_FILE",
    "plans_file",
    "SCHEMA_VERSION",
    "Configuration",
    "Fingerprint",
    "IntensitySource",
    "IntensityStats",
    "Network",
    "Normalization",
    "Plans",
    "Resampling",
    "Trainer",
    "load_fingerprint",
    "load_model",
    "load_plans",
    "save_model",
]

SCHEMA_VERSION = 1
ConfigName = Literal["2d", "3d_fullres"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class IntensityStats(_Model):
    """Foreground intensity statistics of one channel (nnU-Net's fingerprint)."""

    mean: float
    median: float
    std: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float


IntensitySource = Literal["labelled foreground", "nonzero region"]


class Fingerprint(_Model):
    schema_version: Literal[1] = SCHEMA_VERSION
    dataset_name: str
    dataset_root: str
    channel_names: dict[int, str]
    labels: dict[int, str]
    case_ids: list[str]
    spacings: list[list[float]] = Field(description="per case, (z, y, x) order of the files")
    shapes_after_crop: list[list[int]]
    median_relative_size_after_cropping: float
    foreground_intensity_properties_per_channel: dict[int, IntensityStats]
    intensity_source: IntensitySource = Field(
        "labelled foreground",
        description="where the intensity statistics come from: label > 0 of the labelled cases, or (no case "
        "labelled yet) the non-zero region of every case",
    )
    voxels_per_class: dict[int, int] = Field(description="label voxels over labelled cases, background included")

    @model_validator(mode="after")
    def _consistent(self) -> "Fingerprint":
        n = len(self.case_ids)
        if len(self.spacings) != n or len(self.shapes_after_crop) != n:
            raise ValueError(f"spacings and shapes_after_crop must have one entry per case ({n})")
        return self


class Normalization(_Model):
    """How one channel is normalised. CT uses the dataset-wide foreground statistics."""

    scheme: Literal["zscore", "ct", "none"]
    use_mask_for_norm: bool = False
    clip_lower: float | None = None
    clip_upper: float | None = None
    mean: float | None = None
    std: float | None = None

    @model_validator(mode="after")
    def _ct_needs_stats(self) -> "Normalization":
        if self.scheme == "ct" and None in (self.clip_lower, self.clip_upper, self.mean, self.std):
            raise ValueError("scheme 'ct' needs clip_lower, clip_upper, mean and std")
        if self.std is not None and self.std <= 0:
            raise ValueError("std must be > 0")
        return self


class Resampling(_Model):
    image_order: int = Field(3, ge=0, le=5)
    label_order: int = Field(1, ge=0, le=5, description="order used per one-hot label channel, thresholded at 0.5")
    order_z: int = Field(0, ge=0, le=5, description="order along the low-resolution axis when resampled separately")
    separate_z_anisotropy_threshold: float = Field(3.0, gt=1)


class Network(_Model):
    """A U-Net topology in the terms of MONAI's DynUNet (one entry per resolution stage)."""

    n_stages: int = Field(ge=1)
    features_per_stage: list[int]
    kernel_sizes: list[list[int]]
    strides: list[list[int]]
    n_conv_per_stage: int = 2
    norm: Literal["instance"] = "instance"
    norm_eps: float = 1e-5
    norm_affine: bool = True
    nonlin: Literal["leakyrelu"] = "leakyrelu"
    negative_slope: float = 0.01
    conv_bias: bool = True
    deep_supervision: bool = True
    dropout_train: float = Field(
        0.01, ge=0, lt=1, description="rate during training (docs/design.md); 0 disables dropout"
    )
    dropout_mc: float = Field(0.1, ge=0, lt=1, description="rate during Monte-Carlo passes")

    @model_validator(mode="after")
    def _lengths(self) -> "Network":
        n = self.n_stages
        for name in ("features_per_stage", "kernel_sizes", "strides"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} needs {n} entries (n_stages), got {len(getattr(self, name))}")
        dims = {len(k) for k in self.kernel_sizes} | {len(s) for s in self.strides}
        if len(dims) != 1:
            raise ValueError("kernel_sizes and strides must all have the same number of axes")
        if any(f <= 0 for f in self.features_per_stage):
            raise ValueError("features_per_stage must be positive")
        if any(s not in (1, 2) for st in self.strides for s in st):
            raise ValueError("strides must be 1 or 2")
        if any(k < 1 or k % 2 == 0 for ks in self.kernel_sizes for k in ks):
            raise ValueError("kernel sizes must be odd and >= 1")
        return self

    @property
    def dims(self) -> int:
        return len(self.kernel_sizes[0])


class Trainer(_Model):
    """nnU-Net v2's training recipe (``nnUNetTrainer``'s defaults); every field can be overridden from the CLI."""

    loss: Literal["dice_ce"] = "dice_ce"
    optimizer: Literal["sgd"] = "sgd"
    lr: float = Field(1e-2, gt=0)
    momentum: float = Field(0.99, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(3e-5, ge=0)
    poly_exponent: float = Field(0.9, gt=0)
    # nnU-Net steps the poly decay once per epoch; alseg by default after every iteration
    lr_step: Literal["iteration", "epoch"] = "iteration"
    epochs: int = Field(1000, ge=1)
    iterations_per_epoch: int = Field(250, ge=1)
    foreground_oversample: float = Field(0.33, ge=0, le=1)


class Configuration(_Model):
    name: ConfigName
    data_identifier: str
    spacing: list[float]
    median_shape: list[int]
    patch_size: list[int]
    batch_size: int = Field(ge=1)
    normalization: list[Normalization]
    resampling: Resampling = Resampling()
    network: Network
    trainer: Trainer = Trainer()

    @model_validator(mode="after")
    def _shapes(self) -> "Configuration":
        d = self.network.dims
        if len(self.patch_size) != d:
            raise ValueError(f"patch_size has {len(self.patch_size)} axes, the network has {d}")
        if any(p <= 0 for p in self.patch_size):
            raise ValueError("patch_size must be positive")
        if any(s <= 0 for s in self.spacing):
            raise ValueError("spacing must be positive")
        for axis, p in enumerate(self.patch_size):
            factor = 1
            for st in self.network.strides:
                factor *= st[axis]
            if p % factor:
                raise ValueError(f"patch_size[{axis}]={p} is not divisible by the network's total stride {factor}")
        return self


class Plans(_Model):
    schema_version: Literal[1] = SCHEMA_VERSION
    dataset_name: str
    dataset_root: str
    plans_name: str = "alsegPlans"
    image_reader: Literal["SimpleITK"] = "SimpleITK"
    channel_names: dict[int, str]
    labels: dict[int, str]
    transpose_forward: list[int]
    transpose_backward: list[int]
    original_median_spacing_after_transp: list[float]
    original_median_shape_after_transp: list[int]
    configurations: dict[str, Configuration]
    intensity_source: IntensitySource | None = Field(
        None,
        description="where the CT normalisation's intensities came from (as fingerprint.json): the labelled "
        "foreground, or the nonzero region when no case had a label; None in plans written before it was recorded. "
        "alseg's own key: nnU-Net's exported plans do not carry it",
    )

    @model_validator(mode="after")
    def _transpose(self) -> "Plans":
        if sorted(self.transpose_forward) != [0, 1, 2]:
            raise ValueError("transpose_forward must be a permutation of [0, 1, 2]")
        back = [self.transpose_forward.index(i) for i in range(3)]
        if self.transpose_backward != back:
            raise ValueError(f"transpose_backward must invert transpose_forward ({back})")
        if not self.configurations:
            raise ValueError("at least one configuration is needed")
        for key, conf in self.configurations.items():
            if key != conf.name:
                raise ValueError(f"configuration key '{key}' differs from its name '{conf.name}'")
            if len(conf.normalization) != len(self.channel_names):
                raise ValueError(f"{key}: one normalization entry per channel ({len(self.channel_names)}) is needed")
        return self

    def configuration(self, name: str) -> Configuration:
        if name not in self.configurations:
            raise AlsegError(f"the plan has no configuration '{name}' — choose one of {sorted(self.configurations)}")
        return self.configurations[name]

    @property
    def n_classes(self) -> int:
        return len(self.labels)


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    extra = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    return f"field '{loc}': {msg}{extra}"


def load_model(cls: type[_Model], path: str | Path):
    """Load and validate a plan file; any problem is one line naming the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise AlsegError(f"not found — run 'alseg plan DATASET -o {path.parent}' first", path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AlsegError(
            f"invalid JSON at line {e.lineno} ({e.msg}) — fix the file or re-run 'alseg plan'", path
        ) from None
    if isinstance(data, dict) and data.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise AlsegError(
            f"schema_version {data.get('schema_version')} is not supported (this alseg reads {SCHEMA_VERSION}) — re-run 'alseg plan'",
            path,
        )
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise AlsegError(f"does not validate: {_first_error(e)} — fix it or re-run 'alseg plan'", path) from None


PLANS_FILE = "plans.json"
"""A plan folder's plan (``alseg plan -o PLAN``); the preprocessed cache lies beside it."""
FINGERPRINT_FILE = "fingerprint.json"
"""A plan folder's dataset fingerprint."""


def plans_file(plan_dir: str | Path) -> Path:
    """The plan file of a plan folder."""
    return Path(plan_dir) / PLANS_FILE


def load_plans(path: str | Path) -> Plans:
    return load_model(Plans, path)


def load_fingerprint(path: str | Path) -> Fingerprint:
    return load_model(Fingerprint, path)


def save_model(model: _Model, path: str | Path) -> None:
    atomic_write_text(Path(path), model.model_dump_json(indent=2) + "\n")
