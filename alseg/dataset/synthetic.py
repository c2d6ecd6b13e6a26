"""The built-in synthetic dataset: MSD-layout data that needs no download.

Why it exists: CI, the tests and ``alseg demo`` must run end to end on a machine with no
network and no licence to redistribute real scans. The default is shaped like the task the
paper's experiments use, MSD Task04 Hippocampus: small MRI crops of about 36 x 50 x 35
voxels at 1 mm, float32 intensities on a 0..~3000 scale, and two *adjacent* small
structures (label 1 "Anterior" head, label 2 "Posterior" body of one curved tube). The
foreground is darker than the surrounding white-matter-like tissue by 1.5-3 noise standard
deviations, and grey-matter-like background regions share its intensity range, so a
network has to learn shape and context rather than a threshold.

Two variants exercise the other branches of the planner:

* ``dims=2``: a 2D-only dataset. Each image is one slice, array ``(1, Y, X)``, written as a
  3D NIfTI whose fake z spacing is 999 mm, as nnU-Net's 2D conversion does.
* ``ct=True``: anisotropic CT-like volumes (z 5 mm, in-plane 0.8 mm) in Hounsfield units:
  air outside a body ellipse, soft tissue, a spine, an organ (label 1) and a hypodense
  lesion (label 2) inside it.

Every case is drawn from its own generator, seeded by ``(seed, case index)``, so case
``synth_007`` has the same arrays whatever ``cases`` and ``test_cases`` are. Test cases
continue the numbering after the training cases. Arrays are in SimpleITK order ``(z, y, x)``;
all geometry below (spacings, centres, radii) is in that order and in millimetres.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from alseg.atomic import atomic_write_text
from alseg.dataset.io import write_image
from alseg.errors import AlsegError

__all__ = [
    "DEFAULT_CASES",
    "DEFAULT_TEST_CASES",
    "DIFFICULTIES",
    "SyntheticCase",
    "case_id",
    "generate_dataset",
    "synthesize_case",
]

DEFAULT_CASES = 24
DEFAULT_TEST_CASES = 4
CASE_PREFIX = "synth_"

# Shapes: a nominal (z, y, x) shape; each axis varies uniformly by +-SHAPE_JITTER voxels.
MRI_SHAPE = (36, 50, 35)  # MSD Hippocampus median is about (36, 50, 35)
CT_SHAPE = (20, 96, 96)
SHAPE_JITTER = {"mri": (4, 4, 4), "ct": (4, 8, 8)}  # CT: at most 24 x 104 x 104 = 260k voxels
CT_SPACING = (5.0, 0.8, 0.8)
MRI_JITTERED_SPACING_FRACTION = 0.25  # the other cases are exactly 1 mm isotropic
MRI_SPACING_JITTER = 0.05  # +-mm on each axis for the jittered cases
SLICE_SPACING_2D = 999.0  # the fake z spacing nnU-Net gives one-slice (2D) images
MRI_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # as in the MSD Hippocampus files (SimpleITK order)
IDENTITY_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

MRI_LABELS = {"0": "background", "1": "Anterior", "2": "Posterior"}
CT_LABELS = {"0": "background", "1": "organ", "2": "lesion"}
CNR_RANGE = (1.5, 3.0)  # foreground contrast / noise standard deviation
DIFFICULTIES = ("hard", "easy")
"""``hard``: Hippocampus-like contrast (CNR 1.5-3, head and body within 3 %), for benchmarks.
``easy``: the demo's, a model learns it in minutes on a CPU: CNR 4-6 and the posterior body 30 %
brighter than the head, so both classes can be told from the image and not only from the shape."""
EASY_CNR_RANGE = (4.0, 6.0)
EASY_CLASS_OFFSET = 0.3  # posterior body intensity relative to the head: brighter, between head and white matter
PSF_SIGMA_MM = 0.6  # blur of the noise-free image: partial-volume edges
BIAS_STRENGTH = 0.06  # standard deviation of each term of the log bias field
MIN_FOREGROUND_VOXELS = {3: 20, 2: 5}  # per class; a draw with fewer is redrawn
MAX_DRAWS = 20
HU_RANGE = (-1024.0, 3071.0)


@dataclass(frozen=True)
class SyntheticCase:
    """One generated case. ``spacing`` and ``origin`` are in array order (z, y, x), mm;
    ``direction`` is the 3x3 matrix in SimpleITK's (x, y, z) order, row-major."""

    image: np.ndarray  # float32 (z, y, x)
    label: np.ndarray  # uint8 (z, y, x), values in {0, 1, 2}
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]


# --------------------------------------------------------------------------- helpers


def _case_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of case ``index``: independent of how many cases are drawn."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def _sigma_vox(sigma_mm: float | tuple[float, float, float], shape, spacing) -> tuple[float, ...]:
    """A blur given in mm as voxels per axis; no blur along a one-voxel axis."""
    s = np.broadcast_to(np.asarray(sigma_mm, float), (3,))
    return tuple(0.0 if n == 1 else float(m / sp) for m, n, sp in zip(s, shape, spacing))


def _smooth_noise(rng: np.random.Generator, shape, spacing, sigma_mm) -> np.ndarray:
    """Gaussian-blurred white noise rescaled to zero mean and unit standard deviation."""
    f = ndi.gaussian_filter(
        rng.standard_normal(shape, dtype=np.float32), _sigma_vox(sigma_mm, shape, spacing), mode="reflect"
    )
    return (f - f.mean()) / max(float(f.std()), 1e-6)


def _grid_mm(shape, spacing) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable (z, y, x) coordinates in mm, zero at the volume centre."""
    axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2) * (sp if n > 1 else 0.0) for n, sp in zip(shape, spacing)]
    return axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]


def _unit(v) -> np.ndarray:
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def _perpendicular(rng: np.random.Generator, u: np.ndarray, flat: bool) -> np.ndarray:
    """A random unit vector perpendicular to ``u`` (in the y-x plane when ``flat``)."""
    while True:
        v = rng.standard_normal(3)
        if flat:
            v[0] = 0.0
        v -= v.dot(u) * u
        if np.linalg.norm(v) > 1e-3:
            return _unit(v)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _draw_shape(rng: np.random.Generator, nominal, jitter, flat: bool) -> tuple[int, int, int]:
    shape = [int(n + rng.integers(-j, j + 1)) for n, j in zip(nominal, jitter)]
    if flat:
        shape[0] = 1
    return tuple(shape)


def _tube(
    grid,
    start: np.ndarray,
    axis: np.ndarray,
    bend: np.ndarray,
    length: float,
    radius_tail: float,
    radius_head: float,
    gamma: float,
    samples: int = 40,
) -> tuple[np.ndarray, np.ndarray]:
    """Signed distance (mm, negative inside) to a curved tube that widens from tail to head,
    and for every voxel the tube parameter t in [0, 1] (0 tail, 1 head) of the nearest part.

    The tube is a union of spheres along the arched centreline
    ``start + t*length*axis + 4 t (1 - t) bend``.
    """
    z, y, x = grid
    sdf = np.full(np.broadcast_shapes(z.shape, y.shape, x.shape), np.inf, dtype=np.float32)
    t_near = np.zeros_like(sdf)
    for t in np.linspace(0.0, 1.0, samples):
        p = start + t * length * axis + 4 * t * (1 - t) * bend
        r = radius_tail + (radius_head - radius_tail) * t**gamma
        d = np.sqrt((z - p[0]) ** 2 + (y - p[1]) ** 2 + (x - p[2]) ** 2) - r
        closer = d < sdf
        sdf[closer] = d[closer]
        t_near[closer] = t
    return sdf, t_near


def _bias_field(rng: np.random.Generator, grid, shape, spacing, strength: float) -> np.ndarray:
    """A smooth multiplicative field exp(low-order polynomial), about 1 +- ``strength``."""
    half = [max((n - 1) / 2 * sp, 1.0) for n, sp in zip(shape, spacing)]
    u = [g / h for g, h in zip(grid, half)]  # in [-1, 1]
    log_b = sum(rng.normal(0, strength) * ui for ui in u)
    log_b = log_b + sum(rng.normal(0, strength / 2) * (ui**2 - 1 / 3) for ui in u)
    log_b = log_b + rng.normal(0, strength / 2) * u[1] * u[2]
    return np.exp(np.broadcast_to(log_b, shape)).astype(np.float32)


def _enough_foreground(label: np.ndarray, dims: int) -> bool:
    counts = np.bincount(label.ravel(), minlength=3)
    return bool(counts[1] >= MIN_FOREGROUND_VOXELS[dims] and counts[2] >= MIN_FOREGROUND_VOXELS[dims])


# --------------------------------------------------------------------------- MRI (default)


def _mri_geometry(rng: np.random.Generator, flat: bool):
    shape = _draw_shape(rng, MRI_SHAPE, SHAPE_JITTER["mri"], flat)
    if rng.random() < MRI_JITTERED_SPACING_FRACTION:
        spacing = [round(1.0 + rng.uniform(-MRI_SPACING_JITTER, MRI_SPACING_JITTER), 3) for _ in range(3)]
    else:
        spacing = [1.0, 1.0, 1.0]
    if flat:
        spacing[0] = SLICE_SPACING_2D
    origin = tuple(round(float(o), 2) for o in rng.uniform(-5.0, 5.0, 3))
    return shape, tuple(spacing), origin


def _mri_label(rng: np.random.Generator, grid, flat: bool) -> tuple[np.ndarray, np.ndarray]:
    """A hippocampus-like curved tube along y: anterior head (1, high y, lower z, wider)
    and posterior body (2), split across the tube so the two always touch. Also returns the
    tube's signed distance in mm."""
    axis = _unit([-0.3, 1.0, 0.0] + rng.uniform(-0.25, 0.25, 3) * np.array([1.0, 0.0, 1.0]))
    if flat:
        axis = _unit(axis * np.array([0.0, 1.0, 1.0]))
    bend = _perpendicular(rng, axis, flat) * rng.uniform(2.0, 6.0)
    length = rng.uniform(25.0, 32.0)
    radius_head, radius_tail = rng.uniform(5.5, 7.0), rng.uniform(3.6, 4.6)
    if flat:  # a slice through the middle of a tube: a bit wider so it is not a thread
        radius_head, radius_tail = radius_head * 1.1, radius_tail * 1.2
    centre = rng.uniform(-2.5, 2.5, 3)
    if flat:
        centre[0] = rng.uniform(-0.3, 0.3) * radius_tail  # the slice cuts near the centreline
    start = centre - 0.5 * length * axis - (2.0 / 3.0) * bend
    sdf, t = _tube(grid, start, axis, bend, length, radius_tail, radius_head, rng.uniform(0.6, 1.2))
    split = rng.uniform(0.55, 0.68)
    label = np.zeros(sdf.shape, np.uint8)
    label[(sdf < 0) & (t >= split)] = 1
    label[(sdf < 0) & (t < split)] = 2
    return label, sdf


def _mri_case(rng: np.random.Generator, dims: int, difficulty: str = "hard") -> SyntheticCase:
    flat = dims == 2
    easy = difficulty == "easy"
    shape, spacing, origin = _mri_geometry(rng, flat)
    grid = _grid_mm(shape, spacing)
    for _ in range(MAX_DRAWS):
        label, sdf = _mri_label(rng, grid, flat)
        if _enough_foreground(label, dims):
            break
    else:  # pragma: no cover - the geometry above always fits
        raise AssertionError("synthetic MRI case without both foreground classes")

    # Background anatomy, relative to white matter = 1: grey-matter-like regions, CSF, vessels.
    sigma = rng.uniform(0.06, 0.09)  # noise standard deviation
    fg_level = 1.0 - rng.uniform(*(EASY_CNR_RANGE if easy else CNR_RANGE)) * sigma
    grey = fg_level - rng.uniform(-0.03, 0.06)  # overlaps the foreground intensities
    folds = _sigmoid(8.0 * (0.3 - np.abs(_smooth_noise(rng, shape, spacing, 2.5))))  # sheet-like cortex
    tissue = 1.0 - (1.0 - grey) * folds
    tissue += 0.03 * _smooth_noise(rng, shape, spacing, 1.0)
    csf = _sigmoid(5.0 * (_smooth_noise(rng, shape, spacing, 2.5) - 1.8))
    # A thin CSF cleft along part of the structure, like the temporal horn of the ventricle.
    cleft = (sdf > 0.4) & (sdf < rng.uniform(1.2, 2.2)) & (_smooth_noise(rng, shape, spacing, 6.0) > 0.5)
    csf = np.maximum(csf, cleft)
    tissue = tissue * (1 - csf) + rng.uniform(0.2, 0.35) * csf
    tissue += rng.uniform(1.0, 1.8) * _sigmoid(6.0 * (_smooth_noise(rng, shape, spacing, 0.8) - 2.7))

    fg = fg_level + 0.02 * _smooth_noise(rng, shape, spacing, 1.5)
    offset = rng.uniform(-0.03, 0.03)  # drawn in both modes, so the other draws stay the same
    offset = EASY_CLASS_OFFSET if easy else offset  # easy: a body the image shows; hard: head and body nearly alike
    fg = np.where(label == 2, fg * (1.0 + offset), fg)
    clean = np.where(label > 0, fg, tissue)
    clean = ndi.gaussian_filter(clean, _sigma_vox(PSF_SIGMA_MM, shape, spacing))
    clean *= _bias_field(rng, grid, shape, spacing, BIAS_STRENGTH)

    scale = rng.uniform(600.0, 1000.0)  # scanner gain: white matter at 600..1000
    real = scale * (clean + sigma * rng.standard_normal(shape, dtype=np.float32))
    imag = scale * sigma * rng.standard_normal(shape, dtype=np.float32)
    image = np.sqrt(real**2 + imag**2).astype(np.float32)  # Rician magnitude
    return SyntheticCase(image, label, spacing, origin, MRI_DIRECTION)


# --------------------------------------------------------------------------- CT


def _ellipsoid(grid, centre, semi_axes, angle: float = 0.0) -> np.ndarray:
    """sum((x_i / a_i)^2) of an ellipsoid rotated by ``angle`` in the y-x plane (< 1 inside)."""
    z, y, x = (g - c for g, c in zip(grid, centre))
    c, s = np.cos(angle), np.sin(angle)
    yr, xr = c * y + s * x, -s * y + c * x
    return (z / semi_axes[0]) ** 2 + (yr / semi_axes[1]) ** 2 + (xr / semi_axes[2]) ** 2


def _ct_case(rng: np.random.Generator, dims: int) -> SyntheticCase:
    flat = dims == 2
    shape = _draw_shape(rng, CT_SHAPE, SHAPE_JITTER["ct"], flat)
    spacing = (SLICE_SPACING_2D if flat else CT_SPACING[0], CT_SPACING[1], CT_SPACING[2])
    fov = [n * sp for n, sp in zip(shape, spacing)]
    origin = (round(float(rng.uniform(-200.0, 0.0)), 1), -fov[1] / 2, -fov[2] / 2)
    grid = _grid_mm(shape, spacing)
    z, y, x = grid

    # Body: an in-plane ellipse (the same on every slice), a fat rim, a spine behind.
    body_axes = (np.inf, rng.uniform(0.32, 0.40) * fov[1], rng.uniform(0.38, 0.45) * fov[2])
    body_centre = (0.0, rng.uniform(-3.0, 3.0), rng.uniform(-3.0, 3.0))
    body = np.broadcast_to(_ellipsoid(grid, body_centre, body_axes), shape)
    rim = rng.uniform(0.80, 0.90)
    spine_centre = (0.0, body_centre[1] + 0.72 * body_axes[1], body_centre[2])
    spine_r = rng.uniform(4.0, 6.0)
    spine = np.broadcast_to(_ellipsoid(grid, spine_centre, (np.inf, spine_r, spine_r)), shape)

    for _ in range(MAX_DRAWS):
        organ_axes = (rng.uniform(15.0, 30.0), rng.uniform(10.0, 15.0), rng.uniform(10.0, 15.0))
        organ_centre = np.array(
            [
                0.0 if flat else rng.uniform(-10.0, 10.0),
                body_centre[1] + rng.uniform(-0.35, -0.1) * body_axes[1],
                body_centre[2] + rng.uniform(-0.3, 0.3) * body_axes[2],
            ]
        )
        lumpy = 1.0 + 0.15 * _smooth_noise(rng, shape, spacing, (10.0, 6.0, 6.0))
        organ = _ellipsoid(grid, organ_centre, organ_axes, rng.uniform(0, np.pi)) * lumpy < 1.0
        # The lesion sits inside the organ, towards its edge, and may bulge out of it.
        d = _unit(rng.standard_normal(3) * np.array([0.0 if flat else 0.3, 1.0, 1.0]))
        reach = 1.0 / np.linalg.norm(d / np.array(organ_axes))  # the organ's radius along d
        lesion_centre = organ_centre + d * reach * rng.uniform(0.35, 0.8)
        lesion_axes = (rng.uniform(6.0, 10.0), rng.uniform(4.0, 7.0), rng.uniform(4.0, 7.0))
        lesion = (_ellipsoid(grid, lesion_centre, lesion_axes) < 1.0) & (body < rim**2)
        label = np.zeros(shape, np.uint8)
        label[organ & (body < rim**2)] = 1
        label[lesion] = 2
        if _enough_foreground(label, dims) and not np.any((label > 0) & (spine < 1.3)):
            break
    else:  # pragma: no cover - the organ is drawn well inside the body
        raise AssertionError("synthetic CT case without both foreground classes")

    noise_sd = rng.uniform(12.0, 20.0)  # HU
    tissue_hu = rng.uniform(35.0, 45.0)
    hu = np.full(shape, -1000.0, np.float32)
    hu[body < 1.0] = -100.0  # subcutaneous fat
    inner = body < rim**2
    texture = 8.0 * _smooth_noise(rng, shape, spacing, (8.0, 4.0, 4.0))
    fat_islands = _smooth_noise(rng, shape, spacing, (10.0, 5.0, 5.0)) > 1.6
    hu[inner] = (tissue_hu + texture)[inner]
    hu[inner & fat_islands] = -90.0
    hu[spine < 1.0] = rng.uniform(200.0, 300.0)  # cancellous bone
    hu[(spine < 1.0) & (spine > 0.6)] = rng.uniform(600.0, 900.0)  # cortex
    organ_hu = tissue_hu + rng.uniform(*CNR_RANGE) * noise_sd
    hu[label == 1] = organ_hu + 0.5 * texture[label == 1]
    hu[label == 2] = rng.uniform(12.0, 28.0) + 0.5 * texture[label == 2]
    hu = ndi.gaussian_filter(hu, _sigma_vox((1.5, PSF_SIGMA_MM, PSF_SIGMA_MM), shape, spacing))
    noise = ndi.gaussian_filter(
        rng.standard_normal(shape, dtype=np.float32), _sigma_vox((0.0, 0.5, 0.5), shape, spacing)
    )
    hu += noise_sd * noise / max(float(noise.std()), 1e-6)  # in-plane correlated, like filtered back-projection
    image = np.clip(hu, *HU_RANGE).astype(np.float32)
    return SyntheticCase(image, label, spacing, origin, IDENTITY_DIRECTION)


# --------------------------------------------------------------------------- public API


def synthesize_case(
    index: int, seed: int = 0, dims: int = 3, ct: bool = False, difficulty: str = "hard"
) -> SyntheticCase:
    """Case ``index`` of the dataset ``generate_dataset(..., seed, dims, ct, difficulty=...)`` writes, in memory.

    ``difficulty`` (:data:`DIFFICULTIES`) applies to the MRI-like cases; CT cases ignore it.
    """
    _check_args(dims=dims)
    if difficulty not in DIFFICULTIES:
        raise AlsegError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")
    rng = _case_rng(seed, index)
    return _ct_case(rng, dims) if ct else _mri_case(rng, dims, difficulty)


def case_id(index: int) -> str:
    return f"{CASE_PREFIX}{index:03d}"


def _check_args(cases: int = 1, dims: int = 3, test_cases: int = 0) -> None:
    if dims not in (2, 3):
        raise AlsegError(f"dims must be 2 or 3, got {dims}; use 3 for volumes or 2 for single-slice images")
    if cases < 1:
        raise AlsegError(f"cases must be at least 1, got {cases}; ask for 1 or more training cases")
    if test_cases < 0:
        raise AlsegError(f"test_cases must be 0 or more, got {test_cases}")


def _write(array: np.ndarray, case: SyntheticCase, path: Path) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in case.spacing[::-1]))
    img.SetOrigin(tuple(float(o) for o in case.origin[::-1]))
    img.SetDirection(case.direction)
    write_image(img, path)  # atomic and verified: a full disk is one line, never a truncated file


def _dataset_json(train_ids: list[str], test_ids: list[str], seed: int, dims: int, ct: bool) -> dict:
    kind = "CT-like organ and lesion" if ct else "MRI-like hippocampus (anterior head, posterior body)"
    return {
        "name": "SyntheticCT" if ct else "SyntheticHippocampus",
        "description": f"alseg synthetic {kind}, {'2D single-slice' if dims == 2 else '3D'} (seed={seed})",
        "reference": "generated by alseg.dataset.synthetic",
        "licence": "CC0-1.0",
        "release": "1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT" if ct else "MRI"},
        "labels": dict(CT_LABELS if ct else MRI_LABELS),
        "numTraining": len(train_ids),
        "numTest": len(test_ids),
        "training": [{"image": f"./imagesTr/{i}.nii.gz", "label": f"./labelsTr/{i}.nii.gz"} for i in train_ids],
        "test": [f"./imagesTs/{i}.nii.gz" for i in test_ids],
    }


def generate_dataset(
    out: Path,
    cases: int = DEFAULT_CASES,
    seed: int = 0,
    dims: int = 3,
    ct: bool = False,
    test_cases: int = DEFAULT_TEST_CASES,
    difficulty: str = "hard",
) -> Path:
    """Write a synthetic dataset in the Medical Segmentation Decathlon layout and return ``out``.

    ``out/dataset.json``, ``imagesTr/`` and ``labelsTr/`` hold training cases
    ``synth_000 .. synth_{cases-1}``; ``imagesTs/`` holds ``test_cases`` unlabelled cases
    numbered after them. The same arguments give identical arrays, and case k does not
    depend on ``cases``. Files of an earlier run named ``synth_NNN.nii.gz`` that this run
    does not list are removed, so the folders match dataset.json.
    """
    _check_args(cases, dims, test_cases)
    out = Path(out)
    folders = {name: out / name for name in ("imagesTr", "labelsTr", "imagesTs")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    train_ids = [case_id(i) for i in range(cases)]
    test_ids = [case_id(i) for i in range(cases, cases + test_cases)]

    for i, cid in enumerate(train_ids + test_ids):
        case = synthesize_case(i, seed, dims, ct, difficulty)
        if i < cases:
            _write(case.image, case, folders["imagesTr"] / f"{cid}.nii.gz")
            _write(case.label, case, folders["labelsTr"] / f"{cid}.nii.gz")
        else:
            _write(case.image, case, folders["imagesTs"] / f"{cid}.nii.gz")

    keep = {"imagesTr": set(train_ids), "labelsTr": set(train_ids), "imagesTs": set(test_ids)}
    pattern = re.compile(rf"^{CASE_PREFIX}\d+\.nii\.gz$")
    for name, folder in folders.items():
        for f in folder.iterdir():
            if pattern.match(f.name) and f.name[: -len(".nii.gz")] not in keep[name]:
                f.unlink()

    atomic_write_text(
        out / "dataset.json", json.dumps(_dataset_json(train_ids, test_ids, seed, dims, ct), indent=2) + "\n"
    )
    return out
