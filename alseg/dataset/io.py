"""Image I/O through SimpleITK, in nnU-Net's array convention.

Arrays are numpy in SimpleITK order: ``(z, y, x)`` per channel, images stacked to
``(C, z, y, x)``; spacing, origin and direction are given in the same axis order, so
``spacing[0]`` belongs to ``array.shape[1]``. nnU-Net v2's SimpleITKIO uses the same
convention, which keeps alseg's plans comparable with nnU-Net's.
"""

from __future__ import annotations

import errno
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from alseg.atomic import INCOMPLETE, default_file_mode, kill_hook, write_error
from alseg.errors import AlsegError

__all__ = ["IMAGE_SUFFIXES", "Geometry", "read_volume", "readable_volume", "to_sitk", "write_image", "write_volume"]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


@dataclass(frozen=True)
class Geometry:
    """Where a voxel grid lies in the world, axes in array order (z, y, x)."""

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]  # row-major matrix in array axis order

    def matches(self, other: "Geometry", tol: float = 1e-3) -> str | None:
        """The first field in which two grids differ, or None when they agree."""
        for name in ("spacing", "origin", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            if a.shape != b.shape or not np.allclose(a, b, atol=tol, rtol=tol):
                return name
        return None

    def to_json(self) -> dict:
        return {"spacing": list(self.spacing), "origin": list(self.origin), "direction": list(self.direction)}

    @classmethod
    def from_json(cls, d: dict) -> "Geometry":
        return cls(tuple(d["spacing"]), tuple(d["origin"]), tuple(d["direction"]))


def _geometry_of(img: sitk.Image | sitk.ImageFileReader) -> Geometry:
    dim = img.GetDimension()
    direction = np.asarray(img.GetDirection()).reshape(dim, dim)
    # SimpleITK reports (x, y, z); reverse every axis to match the numpy array order.
    direction = direction[::-1, ::-1]
    return Geometry(
        spacing=tuple(float(s) for s in img.GetSpacing()[::-1]),
        origin=tuple(float(o) for o in img.GetOrigin()[::-1]),
        direction=tuple(float(d) for d in direction.ravel()),
    )


_GEOMETRY_FIX = (
    "has voxel spacing",
    "(x, y, z) — every spacing must be a positive, finite number of mm; fix the header (e.g. with nibabel or SimpleITK) and re-save",
)


def _check_nifti_geometry(path: Path, affine_too: bool = False) -> None:
    """A NIfTI header's spacing, checked for what ITK would hide or garble (it reads a zero or NaN
    voxel size as 1 mm, a negative one as a negative spacing, with warnings on stderr); with ``affine_too`` (once ITK has refused the file) also the affine,
    singular or not orthogonal, which ITK would only call corrupt."""
    import nibabel as nib  # only NIfTI files need it: imported here to keep start-up light

    try:  # the header as written: nibabel's load would quietly "fix" a zero or negative voxel size
        with nib.openers.ImageOpener(str(path)) as f:
            header = nib.Nifti1Header.from_fileobj(f, check=False)
        n = min(max(int(header["dim"][0]), 1), 3)
        zooms = np.asarray(header["pixdim"][1 : n + 1], dtype=np.float64)
        affine = np.asarray(header.get_best_affine(), dtype=np.float64) if affine_too else None
    except Exception:  # not readable as NIfTI: read_volume's own message says so
        return
    if not (np.isfinite(zooms).all() and (zooms > 0).all()):
        raise AlsegError(f"{_GEOMETRY_FIX[0]} {tuple(float(z) for z in zooms)} {_GEOMETRY_FIX[1]}", path)
    if not affine_too:
        return
    m = affine[:3, :n]  # the columns of the image's own axes (a 2D image has two)
    if not np.isfinite(m).all():
        raise AlsegError("has an affine (sform/qform) with NaN or infinite entries — fix the header and re-save", path)
    norms = np.linalg.norm(m, axis=0)
    singular = np.linalg.svd(m, compute_uv=False)
    if (norms < 1e-12).any() or singular[-1] < 1e-9 * singular[0]:
        raise AlsegError(
            "has a singular affine (sform/qform): its axes do not span 3D space, so no voxel has a place — "
            "fix the header (set a valid sform or qform) and re-save",
            path,
        )
    cos = m / norms
    off = float(np.abs(cos.T @ cos - np.eye(n)).max())
    if off > 1e-3:
        raise AlsegError(
            f"has a sheared (non-orthogonal) affine: its axes are {np.degrees(np.arcsin(min(off, 1.0))):.1f}° off a right "
            "angle, which ITK and nnU-Net cannot represent — resample it onto an orthogonal grid and re-save",
            path,
        )


def read_volume(path: Path) -> tuple[np.ndarray, Geometry]:
    """One file as an array in (z, y, x) order (4D files come back as (t, z, y, x)).

    NIfTI voxels are read with nibabel because ITK silently turns NaN into 0 and zero-fills
    truncated files; the geometry always comes from SimpleITK, in its (LPS) convention.
    A missing, truncated or otherwise unreadable file is a user error naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise AlsegError("file not found — add it or remove it from dataset.json", path)
    corrupt = AlsegError("cannot be read (truncated or corrupt image file) — re-export or re-download it", path)
    nifti = path.name.endswith((".nii", ".nii.gz"))
    if nifti:
        _check_nifti_geometry(path)  # ITK reads a zero spacing as 1 and calls a singular affine corrupt
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        if nifti:
            reader.ReadImageInformation()
            img = reader
            import nibabel as nib  # only NIfTI files need it: imported here to keep start-up light

            arr = np.asanyarray(nib.load(str(path)).dataobj).T
        else:
            img = reader.Execute()
            arr = sitk.GetArrayFromImage(img)
    except Exception:
        if nifti:
            _check_nifti_geometry(path, affine_too=True)  # the real cause, when it is the affine
        raise corrupt from None
    geom = _geometry_of(img)
    spacing = np.asarray(geom.spacing, dtype=np.float64)
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise AlsegError(f"{_GEOMETRY_FIX[0]} {tuple(geom.spacing)[::-1]} {_GEOMETRY_FIX[1]}", path)
    dim = img.GetDimension()
    if arr.ndim != dim:  # nibabel drops trailing singleton axes that the header declares
        arr = arr.reshape((1,) * (dim - arr.ndim) + arr.shape)
    if dim == 4:
        # channels/time last in the file, first in the array: keep the spatial geometry only.
        geom = Geometry(
            geom.spacing[1:], geom.origin[1:], tuple(np.asarray(geom.direction).reshape(4, 4)[1:, 1:].ravel())
        )
    elif dim == 2:
        # A 2D image becomes one slice; 999 marks the fake axis, as nnU-Net does.
        arr = arr[None]
        direction = np.eye(3)
        direction[1:, 1:] = np.asarray(geom.direction).reshape(2, 2)
        geom = Geometry((999.0,) + geom.spacing, (0.0,) + geom.origin, tuple(direction.ravel()))
    return np.ascontiguousarray(arr), geom


def to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """A (z, y, x) array on a given grid as a SimpleITK image."""
    img = sitk.GetImageFromArray(array)
    dim = img.GetDimension()
    img.SetSpacing(tuple(float(s) for s in geometry.spacing[::-1]))
    img.SetOrigin(tuple(float(o) for o in geometry.origin[::-1]))
    img.SetDirection(tuple(np.asarray(geometry.direction).reshape(dim, dim)[::-1, ::-1].ravel()))
    return img


def write_volume(array: np.ndarray, geometry: Geometry, path: Path) -> None:
    """Write atomically (temp file + rename) and verified, so a crash or a full disk never
    leaves half a file (:func:`write_image`)."""
    write_image(to_sitk(array, geometry), path)


def _read_back(path: str, expected: np.ndarray) -> bool:
    """Whether the file at ``path`` holds exactly ``expected`` (a SimpleITK-order array)."""
    try:
        if path.endswith((".nii", ".nii.gz")):
            import nibabel as nib  # only NIfTI files need it: imported here to keep start-up light

            got = np.asanyarray(nib.load(path).dataobj).T  # nibabel, not ITK: ITK zero-fills a truncated file
            got = got.reshape(expected.shape) if got.size == expected.size else got
        else:
            got = sitk.GetArrayFromImage(sitk.ReadImage(path))
    except Exception:
        return False
    return got.shape == expected.shape and np.array_equal(got, expected, equal_nan=expected.dtype.kind == "f")


@contextmanager
def _stderr_discarded() -> Iterator[None]:
    """File descriptor 2 to /dev/null for a moment: a failed write is then alseg's one line."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def write_image(img: sitk.Image, path: Path) -> None:
    """Write a SimpleITK image atomically and verified: temp file beside ``path``, fsync, read
    back in full and compared voxel by voxel, rename. ITK ignores some failed writes (with the
    file size limit reached it reports success for a truncated file), so the read-back is what
    finds them. A failed write is one line naming ``path``; no partial file is left."""
    path = Path(path)
    suffix = next((s for s in IMAGE_SUFFIXES if path.name.endswith(s)), path.suffix)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # named after its target, so the debris of a killed write can be told apart per file
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + suffix)
        os.close(fd)
        try:
            with _stderr_discarded():  # the NIfTI library prints its own lines on a failed write
                sitk.WriteImage(img, tmp, useCompression=True)
        except RuntimeError as err:  # ITK reports a failed write (e.g. a full disk) as a RuntimeError
            raise OSError(errno.EIO, "write failed") from err
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if not _read_back(tmp, sitk.GetArrayViewFromImage(img)):
            raise OSError(errno.EIO, INCOMPLETE)
        os.chmod(tmp, default_file_mode())  # readable by others, as any new file (mkstemp gives 0600)
        kill_hook(path)
        os.replace(tmp, path)
    except OSError as err:
        raise write_error(err, Path(err.filename) if err.filename and err.filename != tmp else path) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def readable_volume(path: Path) -> bool:
    """Whether ``path`` is an image file that reads back whole (``predict --continue`` re-predicts others)."""
    try:
        read_volume(path)
    except AlsegError:
        return False
    return True
