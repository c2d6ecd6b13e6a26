"""The experiment planner pins nnU-Net v2's rules on known inputs (nnunet-planning.md).

Expected numbers were checked against nnU-Net v2.8.1's own ExperimentPlanner and
dynamic_network_architectures (benchmarks/plans_vs_nnunet.py compares whole datasets).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from alseg.errors import AlsegError
from alseg.plans.models import Fingerprint, IntensityStats, load_plans, save_model
from alseg.plans.nnunet_export import nnunet_dataset_name, to_nnunet_fingerprint, to_nnunet_plans
from alseg.plans.planner import (
    determine_fullres_target_spacing,
    determine_transpose,
    plan_experiment,
    summarize_plans,
)
from alseg.plans.topology import conv_feature_map_size, get_pool_and_conv_props

TASK04 = Path(__file__).resolve().parents[2] / "shared" / "data" / "Task04_Hippocampus"
"""Real data beside the checkout (``../shared``), as every machine of this project has it."""
STATS = IntensityStats(
    mean=100.0, median=95.0, std=20.0, min=-50.0, max=400.0, percentile_00_5=10.0, percentile_99_5=300.0
)


def fingerprint(spacings, shapes, channel="MRI", relative_size=1.0, labels=None, voxels=None) -> Fingerprint:
    n = len(spacings)
    return Fingerprint(
        dataset_name="Test",
        dataset_root="/nowhere",
        channel_names={0: channel},
        labels=labels or {0: "background", 1: "a", 2: "b"},
        case_ids=[f"c{i:03d}" for i in range(n)],
        spacings=[list(map(float, s)) for s in spacings],
        shapes_after_crop=[list(map(int, s)) for s in shapes],
        median_relative_size_after_cropping=relative_size,
        foreground_intensity_properties_per_channel={0: STATS},
        voxels_per_class=voxels or {0: 1000 * n, 1: 10 * n, 2: 10 * n},
    )


def hippocampus(n: int) -> Fingerprint:
    return fingerprint([(1, 1, 1)] * n, [(36, 50, 35)] * n)


# --------------------------------------------------------------------------- topology


def test_topology_hippocampus_3d_three_pools_per_axis():
    t = get_pool_and_conv_props((1.0, 1.0, 1.0), (36, 50, 35))
    assert t.pools_per_axis == (3, 3, 3)
    assert t.patch_size == (40, 56, 40)
    assert t.strides == ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    assert t.kernel_sizes == ((3, 3, 3),) * 4


def test_topology_lone_axis_needs_twelve_and_anisotropic_kernels():
    t = get_pool_and_conv_props((1.0, 1.0), (8, 100))
    assert t.pools_per_axis == (1, 4) and t.patch_size == (8, 112)  # 100 -> 50 -> 25 -> 13 -> 7
    t = get_pool_and_conv_props((5.0, 0.8, 0.8), (20, 100, 100))
    assert t.strides == ((1, 1, 1), (1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2))
    assert t.kernel_sizes[:2] == ((1, 3, 3), (1, 3, 3)) and t.kernel_sizes[2] == (3, 3, 3)
    assert t.patch_size == (20, 112, 112)


def test_vram_estimate_matches_plainconvunet():
    # PlainConvUNet.compute_conv_feature_map_size of dynamic_network_architectures 0.4.4
    strides3 = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert conv_feature_map_size((40, 56, 40), strides3, [32, 64, 128, 256], 3) == 19_174_400
    assert conv_feature_map_size((56, 40), [[1, 1], [2, 2], [2, 2], [2, 2]], [32, 64, 128, 256], 3) == 651_840


# --------------------------------------------------------------------------- steps


def test_hippocampus_like_reference_numbers():
    plans = plan_experiment(hippocampus(260))
    assert plans.transpose_forward == [0, 1, 2]
    two, full = plans.configurations["2d"], plans.configurations["3d_fullres"]
    assert two.patch_size == [56, 40] and full.patch_size == [40, 56, 40]
    assert full.spacing == [1.0, 1.0, 1.0] and full.median_shape == [36, 50, 35]
    # nnU-Net v2 gives 4 resolution stages (3 poolings) in both; 50 -> 25 -> 13 -> 7 stops at 7 < 8.
    assert two.network.n_stages == 4 and full.network.n_stages == 4
    assert two.network.features_per_stage == [32, 64, 128, 256]
    assert two.batch_size == 366  # the paper's number: the 5 % cap binds
    assert full.batch_size == 9


def test_batch_size_five_percent_cap_and_minimum():
    # 208 cases: round(63000 * 208 * 0.05 / 2240) = round(292.5) = 292 (half to even, as nnU-Net)
    assert plan_experiment(hippocampus(208)).configurations["2d"].batch_size == 292
    assert plan_experiment(hippocampus(208)).configurations["3d_fullres"].batch_size == 7
    # tiny dataset: the cap would be < 2, the minimum batch size 2 wins
    assert plan_experiment(hippocampus(4)).configurations["3d_fullres"].batch_size == 2


def test_large_images_shrink_patch_until_memory_fits():
    plans = plan_experiment(fingerprint([(1, 1, 1)] * 20, [(300, 300, 300)] * 20))
    full = plans.configurations["3d_fullres"]
    assert np.prod(full.patch_size) < 200**3 and full.batch_size == 2
    assert full.network.features_per_stage[-1] == 320  # capped in 3D
    two = plans.configurations["2d"]
    assert two.network.features_per_stage[-1] == 512 and two.patch_size == [320, 320]


def test_anisotropic_ct_transpose_spacing_kernels_and_ct_normalisation():
    # file order (z, y, x) but the coarse axis is the last one here: transpose must move it first
    z_spacings = [3.0, 4.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0]
    spacings = [(0.8, 0.8, z) for z in z_spacings]
    shapes = [(120, 110, 24)] * len(spacings)
    fp = fingerprint(spacings, shapes, channel="CT")
    target = determine_fullres_target_spacing(fp.spacings, fp.shapes_after_crop)
    assert target[2] == pytest.approx(np.percentile(z_spacings, 10))  # anisotropy rule: 10th percentile
    assert determine_transpose(target) == ([2, 0, 1], [1, 2, 0])
    plans = plan_experiment(fp)
    assert plans.transpose_forward == [2, 0, 1] and plans.transpose_backward == [1, 2, 0]
    full = plans.configurations["3d_fullres"]
    assert full.spacing == pytest.approx([np.percentile(z_spacings, 10), 0.8, 0.8])
    assert full.network.kernel_sizes[0][0] == 1 and full.network.kernel_sizes[0][1:] == [3, 3]
    assert full.network.strides[1][0] == 1  # z not pooled in the first stage
    assert plans.configurations["2d"].spacing == [0.8, 0.8]
    norm = full.normalization[0]
    assert norm.scheme == "ct" and not norm.use_mask_for_norm
    assert (norm.clip_lower, norm.clip_upper, norm.mean, norm.std) == (10.0, 300.0, 100.0, 20.0)


def test_anisotropy_rule_needs_few_voxels_and_never_goes_below_other_axes():
    # coarse spacing but as many voxels along z as in-plane: plain median
    t = determine_fullres_target_spacing([(5.0, 0.8, 0.8), (3.0, 0.8, 0.8), (5.0, 0.8, 0.8)], [(100, 100, 100)] * 3)
    assert t[0] == 5.0
    # 10th percentile below the in-plane spacing: raised to it (+1e-5)
    t = determine_fullres_target_spacing([(0.5, 0.8, 0.8)] * 2 + [(5.0, 0.8, 0.8)] * 8, [(20, 100, 100)] * 10)
    assert t[0] == pytest.approx(0.8 + 1e-5)


def test_2d_only_dataset_gets_only_2d():
    plans = plan_experiment(fingerprint([(999.0, 1.0, 1.0)] * 10, [(1, 50, 35)] * 10))
    assert list(plans.configurations) == ["2d"]
    assert plans.configurations["2d"].patch_size == [56, 40]


def test_use_mask_for_norm_only_when_cropping_removed_much_and_zscore():
    fp = fingerprint([(1, 1, 1)] * 4, [(36, 50, 35)] * 4, relative_size=0.5)
    assert plan_experiment(fp).configurations["2d"].normalization[0].use_mask_for_norm
    fp = fingerprint([(1, 1, 1)] * 4, [(36, 50, 35)] * 4, relative_size=0.8)
    assert not plan_experiment(fp).configurations["2d"].normalization[0].use_mask_for_norm


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(spacings=[(1, 1, 1)], shapes=[(36, 50, 35)]), "at least 2"),
        (dict(spacings=[(1, 1, 1)] * 3, shapes=[(36, 50, 35)] * 3, voxels={0: 100, 1: 0, 2: 0}), "all background"),
        (dict(spacings=[(1, 1, 1), (0.0, 1, 1)], shapes=[(36, 50, 35)] * 2), "spacing"),
        (dict(spacings=[(1, 1, 1), (2000.0, 1, 1)], shapes=[(36, 50, 35)] * 2), "spacing"),
    ],
)
def test_unplannable_fingerprints_are_one_line_user_errors(kwargs, message):
    with pytest.raises(AlsegError, match=message) as e:
        plan_experiment(fingerprint(**kwargs))
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- files


def test_plan_round_trips_and_invalid_edits_name_the_field(tmp_path):
    plans = plan_experiment(hippocampus(20))
    path = tmp_path / "plans.json"
    save_model(plans, path)
    assert load_plans(path) == plans

    data = json.loads(path.read_text())
    data["configurations"]["3d_fullres"]["patch_size"] = [41, 56, 40]
    path.write_text(json.dumps(data))
    with pytest.raises(AlsegError, match="patch_size"):
        load_plans(path)

    data["configurations"]["3d_fullres"]["patch_size"] = [40, 56, 40]
    data["configurations"]["2d"]["batch_size"] = -4
    path.write_text(json.dumps(data))
    with pytest.raises(AlsegError, match="batch_size"):
        load_plans(path)


def test_nnunet_export_has_nnunet_v2_format():
    fp = hippocampus(20)
    nn = to_nnunet_plans(plan_experiment(fp), fp)
    assert nn["image_reader_writer"] == "SimpleITKIO" and nn["plans_name"] == "nnUNetPlans"
    conf = nn["configurations"]["3d_fullres"]
    arch = conf["architecture"]
    assert arch["network_class_name"] == "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    assert arch["arch_kwargs"]["conv_op"] == "torch.nn.modules.conv.Conv3d"
    assert arch["arch_kwargs"]["norm_op"] == "torch.nn.modules.instancenorm.InstanceNorm3d"
    assert arch["arch_kwargs"]["n_conv_per_stage_decoder"] == [2, 2, 2]
    assert arch["_kw_requires_import"] == ["conv_op", "norm_op", "dropout_op", "nonlin"]
    assert conf["normalization_schemes"] == ["ZScoreNormalization"] and conf["batch_dice"] is False
    assert conf["resampling_fn_data_kwargs"] == {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    assert nn["configurations"]["2d"]["batch_dice"] is True
    assert set(nn["foreground_intensity_properties_per_channel"]["0"]) >= {"mean", "percentile_99_5"}
    json.dumps(nn)  # plain JSON types only


def test_nnunet_dataset_name_follows_the_folder_convention():
    assert nnunet_dataset_name("/data/Dataset004_Hippocampus", "Hippocampus") == "Dataset004_Hippocampus"
    assert nnunet_dataset_name("/data/Task04_Hippocampus", "Hippocampus") == "Dataset004_Hippocampus"
    assert nnunet_dataset_name("/data/my data", "Synthetic Hippo-campus") == "Dataset999_SyntheticHippocampus"
    assert nnunet_dataset_name("/data/Task04_Hippocampus", "x", dataset_id=12) == "Dataset012_Hippocampus"
    with pytest.raises(ValueError, match="3 digits"):
        nnunet_dataset_name("/data/x", "x", dataset_id=1000)


def test_nnunet_export_writes_nnunets_preprocessed_layout(tmp_path: Path):
    # lazy: generating a dataset is slow to import for the other planner tests
    from alseg.dataset.synthetic import generate_dataset
    from alseg.plans.planner import plan_dataset

    data = generate_dataset(tmp_path / "Task07_Synth", cases=4, test_cases=0)
    plan_dataset(data, tmp_path / "plan", export_nnunet=True, show_progress=False)
    folder = tmp_path / "plan" / "nnUNet_preprocessed" / "Dataset007_Synth"
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    fp = json.loads((folder / "dataset_fingerprint.json").read_text())
    ds = json.loads((folder / "dataset.json").read_text())
    assert plans["dataset_name"] == "Dataset007_Synth"
    assert set(fp) == {
        "foreground_intensity_properties_per_channel",
        "median_relative_size_after_cropping",
        "shapes_after_crop",
        "spacings",
    }
    assert len(fp["spacings"]) == len(fp["shapes_after_crop"]) == ds["numTraining"] == 4
    assert ds["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2} and ds["file_ending"] == ".nii.gz"
    assert ds["channel_names"] == {"0": "MRI"}


def test_nnunet_fingerprint_format():
    fp = to_nnunet_fingerprint(hippocampus(3))
    assert fp["spacings"] == [list(map(float, s)) for s in hippocampus(3).spacings]
    assert set(fp["foreground_intensity_properties_per_channel"]["0"]) == {
        "mean",
        "median",
        "std",
        "min",
        "max",
        "percentile_99_5",
        "percentile_00_5",
    }


def test_summary_table_has_a_column_per_configuration():
    table = summarize_plans(plan_experiment(hippocampus(20)))
    assert [c.header for c in table.columns][1:] == ["2d", "3d_fullres"]


@pytest.mark.slow
@pytest.mark.skipif(not TASK04.is_dir(), reason="real data not present")
def test_real_task04_plan(tmp_path):
    from alseg.plans.planner import plan_dataset

    plans = plan_dataset(TASK04, tmp_path, export_nnunet=True, show_progress=False)
    assert plans.configurations["2d"].patch_size == [56, 40]
    assert plans.configurations["3d_fullres"].patch_size == [40, 56, 40]
    assert plans.configurations["3d_fullres"].spacing == [1.0, 1.0, 1.0]
    assert {p.name for p in tmp_path.iterdir()} >= {"plans.json", "fingerprint.json", "nnUNet_preprocessed"}
    export = tmp_path / "nnUNet_preprocessed" / "Dataset004_Hippocampus"
    assert {p.name for p in export.iterdir()} == {"nnUNetPlans.json", "dataset_fingerprint.json", "dataset.json"}
    assert json.loads((export / "nnUNetPlans.json").read_text())["dataset_name"] == "Dataset004_Hippocampus"
