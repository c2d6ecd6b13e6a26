"""Preprocessing maths (resampling, normalisation) and the on-disk cache (CaseCache, build_cache)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from alseg.data.cache import MANIFEST, CaseCache, build_cache
from alseg.data.pipeline import preprocess_case
from alseg.dataset.io import Geometry
from alseg.dataset.raw import read_dataset
from alseg.dataset.resample import resample, separate_axis
from alseg.dataset.synthetic import generate_dataset
from alseg.errors import AlsegError
from alseg.plans.fingerprint import extract_fingerprint
from alseg.plans.models import Normalization, load_plans, save_model
from alseg.plans.planner import plan_experiment

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> tuple[Path, object]:
    """A 3-case Hippocampus-like dataset and its plan (written to ``out/plans.json``)."""
    root = generate_dataset(tmp_path_factory.mktemp("data") / "hippo", cases=3, test_cases=0, seed=0)
    fp = extract_fingerprint(read_dataset(root), workers=1, show_progress=False, n_samples=30_000)
    plans = plan_experiment(fp)
    return root, plans


def blobs(shape=(20, 24, 22)) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    zz, yy, xx = np.indices(shape)
    lab[(zz - 8) ** 2 + (yy - 10) ** 2 + (xx - 9) ** 2 < 25] = 1
    lab[(zz - 12) ** 2 + (yy - 15) ** 2 + (xx - 13) ** 2 < 16] = 2
    return lab


# --------------------------------------------------------------------------- maths


def test_label_resampling_keeps_label_set_and_volume():
    lab = blobs()
    cur, new = (1.0, 1.0, 1.0), (0.6, 1.4, 0.9)
    shape = [round(s * c / n) for s, c, n in zip(lab.shape, cur, new)]
    out = resample(lab[None], shape, cur, new, is_label=True, order=1)[0]
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 1, 2}
    for k in (1, 2):
        vol_in, vol_out = (lab == k).sum() * np.prod(cur), (out == k).sum() * np.prod(new)
        assert vol_out == pytest.approx(vol_in, rel=0.15)


def test_anisotropic_axis_is_resampled_separately_with_nearest():
    assert separate_axis((5.0, 0.8, 0.8), (5.0, 0.8, 0.8)) == 0
    assert separate_axis((1.0, 1.0, 1.0), (1.0, 1.0, 4.0)) == 2
    assert separate_axis((1.0, 1.1, 0.9), (1.0, 1.0, 1.0)) is None
    rng = np.random.default_rng(0)
    img = ndi.gaussian_filter(rng.normal(size=(6, 20, 20)), 1).astype(np.float32)
    out = resample(img[None], (15, 20, 20), (5.0, 0.8, 0.8), (2.0, 0.8, 0.8), order=3)[0]
    # in-plane size unchanged, order 0 along z: every output slice is one of the input slices
    for z in range(out.shape[0]):
        assert any(np.allclose(out[z], img[k]) for k in range(img.shape[0]))


def _case(shape=(12, 30, 28), seed=0):
    rng = np.random.default_rng(seed)
    img = np.zeros(shape, np.float32)
    img[1:-1, 2:-2, 3:-3] = rng.normal(300, 40, (shape[0] - 2, shape[1] - 4, shape[2] - 6))
    lab = np.zeros(shape, np.uint8)
    lab[4:8, 10:20, 10:18] = 1
    img[lab == 1] += 200
    return img[None], lab


def test_zscore_normalisation_zero_mean_unit_std(planned):
    _, plans = planned
    img, lab = _case()
    geom = Geometry((1.0, 1.0, 1.0), (0.0,) * 3, IDENTITY)
    data, seg, props = preprocess_case(img, lab, geom, plans, "3d_fullres")
    assert data.dtype == np.float32 and seg.dtype == np.uint8 and seg.shape == data.shape
    assert data.mean() == pytest.approx(0, abs=1e-4) and data.std() == pytest.approx(1, abs=1e-3)
    assert props["bbox_used_for_cropping"] == [[1, 11], [2, 28], [3, 25]]
    assert props["shape_after_cropping"] == [10, 26, 22] == list(data.shape[1:])
    locs = np.asarray(props["class_locations"]["1"])
    assert len(locs) == props["voxels_per_class"]["1"] == 4 * 10 * 8 and (seg[0][tuple(locs.T)] == 1).all()

    masked = plans.model_copy(deep=True)
    conf = masked.configurations["3d_fullres"]
    conf.normalization = [Normalization(scheme="zscore", use_mask_for_norm=True)]
    img2 = img.copy()
    img2[0, :, :, 20:23] = 0  # a zero band across the image: inside the crop box, outside the mask
    data, _, props = preprocess_case(img2, lab, geom, masked, "3d_fullres")
    assert props["shape_after_cropping"] == [10, 26, 22]
    band = np.zeros(data.shape[1:], bool)
    band[:, :, 17:20] = True
    assert np.abs(data[0][band]).max() == 0  # outside the mask stays 0
    assert data[0][~band].mean() == pytest.approx(0, abs=1e-4) and data[0][~band].std() == pytest.approx(1, abs=1e-3)


def test_ct_normalisation_clips_to_the_plan_percentiles(planned):
    _, plans = planned
    ct = plans.model_copy(deep=True)
    ct.configurations["2d"].normalization = [
        Normalization(scheme="ct", clip_lower=250.0, clip_upper=450.0, mean=350.0, std=50.0)
    ]
    img, lab = _case()
    geom = Geometry((1.0, 1.0, 1.0), (0.0,) * 3, IDENTITY)
    data, _, _ = preprocess_case(img, lab, geom, ct, "2d")
    assert data.max() == pytest.approx((450 - 350) / 50) and data.min() == pytest.approx((250 - 350) / 50)


def test_2d_configuration_never_resamples_the_sliced_axis(planned):
    _, plans = planned
    img, lab = _case()
    geom = Geometry((2.5, 1.2, 1.2), (0.0,) * 3, IDENTITY)
    data, seg, props = preprocess_case(img, lab, geom, plans, "2d")
    assert data.shape[1] == props["shape_after_cropping"][0] == 10
    assert props["spacing_after_resampling"] == pytest.approx([2.5, 1.0, 1.0])
    assert list(data.shape[2:]) == [round(26 * 1.2), round(22 * 1.2)]
    data3, _, _ = preprocess_case(img, lab, geom, plans, "3d_fullres")
    assert data3.shape[1] == 25  # the 3D configuration does resample z


# --------------------------------------------------------------------------- the cache


def _mtimes(folder: Path) -> dict[str, int]:
    return {f.name: f.stat().st_mtime_ns for f in folder.iterdir()}


def test_cache_is_complete_idempotent_and_resumable(planned, tmp_path):
    root, plans = planned
    save_model(plans, tmp_path / "plans.json")
    built = build_cache(load_plans(tmp_path / "plans.json"), "2d", tmp_path, show_progress=False, workers=1)
    assert built == CaseCache.of(tmp_path, plans, "2d")
    cache = built.folder
    assert cache == tmp_path / plans.configurations["2d"].data_identifier
    manifest = built.manifest()
    assert manifest["cases"] == ["synth_000", "synth_001", "synth_002"]
    data, seg, props = built.image("synth_001"), built.label("synth_001"), built.properties("synth_001")
    assert isinstance(data, np.memmap) and data.dtype == np.float32 and data.ndim == 4
    assert seg.shape == data.shape[1:] and props["config_hash"] == manifest["config_hash"]

    before = _mtimes(cache)
    build_cache(plans, "2d", tmp_path, show_progress=False, workers=1)
    assert _mtimes(cache) == before  # complete: nothing rewritten

    # killed mid-way: no manifest, one case missing -> only that case is computed again
    (cache / MANIFEST).unlink()
    for name in ("synth_001.npy", "synth_001_seg.npy", "synth_001.json"):
        (cache / name).unlink()
    (cache / ".synth_002.npy.abc.tmp").write_bytes(b"half")  # debris of a killed atomic write
    build_cache(plans, "2d", tmp_path, show_progress=False, workers=1)
    after = _mtimes(cache)
    assert CaseCache(cache).manifest() is not None and "synth_001.npy" in after
    assert after["synth_000.npy"] == before["synth_000.npy"]
    assert not any(n.endswith(".tmp") for n in after)


def test_cache_of_a_different_plan_is_detected(planned, tmp_path):
    _, plans = planned
    cache = build_cache(plans, "3d_fullres", tmp_path, show_progress=False, workers=1)
    old_hash = cache.manifest()["config_hash"]
    other = plans.model_copy(deep=True)
    other.configurations["3d_fullres"].spacing = [1.5, 1.5, 1.5]
    with pytest.raises(AlsegError, match="different plan"):
        build_cache(other, "3d_fullres", tmp_path, show_progress=False, workers=1, on_mismatch="error")
    assert build_cache(other, "3d_fullres", tmp_path, show_progress=False, workers=1) == cache
    new = CaseCache(cache.folder).manifest()
    assert new["config_hash"] != old_hash
    props = CaseCache(cache.folder).properties("synth_000")
    assert props["config_hash"] == new["config_hash"] and props["spacing_after_resampling"] == [1.5, 1.5, 1.5]


def test_missing_case_in_cache_is_a_user_error(tmp_path):
    with pytest.raises(AlsegError, match="alseg preprocess"):
        CaseCache(tmp_path).image("nope")


def test_case_cache_reads_lazily_what_build_cache_wrote(planned, tmp_path):
    _, plans = planned
    cache = build_cache(plans, "3d_fullres", tmp_path, show_progress=False, workers=1)
    assert cache == CaseCache.of(tmp_path, plans, "3d_fullres")
    assert cache.folder == tmp_path / plans.configurations["3d_fullres"].data_identifier
    assert cache.case_ids() == ["synth_000", "synth_001", "synth_002"]
    image, label = cache.image("synth_002"), cache.label("synth_002")
    assert isinstance(image, np.memmap) and image.dtype == np.float32 and image.ndim == 4
    assert isinstance(label, np.memmap) and label.shape == image.shape[1:] == cache.shape("synth_002")
    props = cache.properties("synth_002")
    assert props["case_id"] == "synth_002" and cache.properties("synth_002") is props  # read once
    assert list(props["shape_after_resampling"]) == list(cache.shape("synth_002"))
    assert cache.image_path("synth_002").is_file() and cache.label_path("synth_002").is_file()
    # another reader of the folder sees the same files, and building again returns the same cache
    np.testing.assert_array_equal(CaseCache(cache.folder).label("synth_002"), label)
    assert build_cache(plans, "3d_fullres", tmp_path, show_progress=False, workers=1).folder == cache.folder


def test_case_cache_without_manifest_is_a_user_error(tmp_path):
    with pytest.raises(AlsegError, match="manifest"):
        CaseCache(tmp_path).case_ids()
    with pytest.raises(AlsegError, match="alseg preprocess"):
        CaseCache(tmp_path).label("nope")
