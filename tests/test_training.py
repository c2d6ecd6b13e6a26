"""SegmentationModule, the Trainer factory and train(): split, schedule, Trainer settings,
checkpoints, metrics.csv, resume, fine-tuning, DDP."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from builders import tiny_plans, write_cache
from sklearn.model_selection import KFold

from alseg.data.datamodule import SegDataModule, whole_case_region
from alseg.errors import AlsegError
from alseg.model import train as train_module
from alseg.model.callbacks import read_metrics
from alseg.model.module import SegmentationModule, apply_overrides
from alseg.model.train import load_weights, make_split, train
from alseg.model.trainer import TrainerSettings, make_trainer, resolved_trainer_kwargs

COLUMNS = ["epoch", "train_loss", "dice_mean", "dice_Anterior", "dice_Posterior"]


def test_trainer_settings_on_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    kw = resolved_trainer_kwargs(TrainerSettings(), max_epochs=3, iterations_per_epoch=7, show_progress=False)
    assert kw["precision"] == "32-true" and kw["deterministic"] == "warn"
    assert kw["gradient_clip_val"] == 12.0 and kw["gradient_clip_algorithm"] == "norm"
    assert kw["accelerator"] == "auto" and kw["devices"] == "auto" and kw["strategy"] == "auto"
    assert kw["max_epochs"] == 3 and kw["log_every_n_steps"] == 7 and kw["limit_val_batches"] == 0
    assert kw["num_sanity_val_steps"] == 0 and kw["logger"] is False and kw["enable_checkpointing"] is False
    assert not kw["enable_progress_bar"] and not kw["enable_model_summary"]
    assert resolved_trainer_kwargs(TrainerSettings(), max_epochs=1, iterations_per_epoch=250)["log_every_n_steps"] == 50
    validating = resolved_trainer_kwargs(TrainerSettings(), max_epochs=1, validate=True, check_val_every_n_epoch=2)
    assert "limit_val_batches" not in validating and validating["check_val_every_n_epoch"] == 2
    trainer = make_trainer(TrainerSettings(), max_epochs=2, show_progress=False)
    assert trainer.max_epochs == 2 and trainer.gradient_clip_val == 12.0 and trainer.precision == "32-true"


def test_trainer_settings_on_a_simulated_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    kw = resolved_trainer_kwargs(TrainerSettings(), max_epochs=1)
    assert kw["precision"] == "16-mixed" and kw["deterministic"] is False
    explicit = resolved_trainer_kwargs(TrainerSettings(precision="bf16-mixed", deterministic=True), max_epochs=1)
    assert explicit["precision"] == "bf16-mixed" and explicit["deterministic"] is True
    on_cpu = resolved_trainer_kwargs(TrainerSettings(accelerator="cpu"), max_epochs=1)
    assert on_cpu["precision"] == "32-true" and on_cpu["deterministic"] == "warn"
    with pytest.raises(ValueError):
        TrainerSettings(precison="16-mixed")  # unknown keys are refused


def test_train_builds_its_trainer_with_the_shared_factory(tmp_path, monkeypatch):
    """``alseg train`` goes through make_trainer, so it gets the loop's settings (plus validation)."""
    seen = {}

    def spy(settings, **kw):
        seen.update(resolved_trainer_kwargs(settings, **kw))
        return make_trainer(settings, **kw)

    monkeypatch.setattr(train_module, "make_trainer", spy)
    cache = write_cache(tmp_path / "cache", n=5)
    train(
        tiny_plans(),
        "2d",
        cache,
        tmp_path / "out",
        epochs=1,
        iters_per_epoch=2,
        num_workers=0,
        augment=False,
        progress=False,
        overrides={"batch_size": 2},
    )
    assert seen == {
        **resolved_trainer_kwargs(
            TrainerSettings(),
            max_epochs=1,
            iterations_per_epoch=2,
            callbacks=seen["callbacks"],
            logger=seen["logger"],
            show_progress=False,
            validate=True,
            default_root_dir=tmp_path / "out",
            check_val_every_n_epoch=1,
        )
    }
    assert seen["enable_checkpointing"] is True and "limit_val_batches" not in seen


def test_make_split_is_nnunets():
    ids = [f"case_{i:03d}" for i in range(13)]
    shuffled = list(np.random.default_rng(0).permutation(ids))
    folds = [make_split(shuffled, f) for f in range(5)]
    for f, (tr, te) in enumerate(folds):
        expected = list(KFold(5, shuffle=True, random_state=12345).split(ids))[f]
        assert te == [ids[i] for i in expected[1]] and tr == [ids[i] for i in expected[0]]
        assert sorted(tr + te) == ids
    assert sorted(sum((te for _, te in folds), [])) == ids
    with pytest.raises(AlsegError, match="fold 5"):
        make_split(ids, 5)
    with pytest.raises(AlsegError, match="3 cases"):
        make_split(ids[:3], 0)


def test_overrides_and_poly_schedule():
    plans = tiny_plans(epochs=4, iterations_per_epoch=5)
    m = SegmentationModule(plans, "2d", lr=0.1, dropout_train=0.0, overrides={"batch_size": 2})
    assert m.config.trainer.lr == 0.1 and m.config.batch_size == 2 and m.net.dropout_train == 0.0
    assert m.hparams["overrides"] == {"batch_size": 2, "lr": 0.1, "dropout_train": 0.0}
    opt_conf = m.configure_optimizers()
    opt, sched = opt_conf["optimizer"], opt_conf["lr_scheduler"]["scheduler"]
    assert opt_conf["lr_scheduler"]["interval"] == "step"
    g = opt.param_groups[0]
    assert (g["momentum"], g["nesterov"], g["weight_decay"]) == (0.99, True, 3e-5)
    lrs = []
    for _ in range(20):
        lrs.append(g["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1 * (1 - k / 20) ** 0.9 for k in range(20)])
    assert g["lr"] == 0.0
    # nnU-Net's PolyLRScheduler: one step per epoch, T = epochs
    per_epoch = SegmentationModule(plans, "2d", lr=0.1, lr_step="epoch").configure_optimizers()
    assert per_epoch["lr_scheduler"]["interval"] == "epoch"
    opt, sched = per_epoch["optimizer"], per_epoch["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1 * (1 - e / 4) ** 0.9 for e in range(4)])
    with pytest.raises(AlsegError, match="invalid override"):
        SegmentationModule(plans, "2d", lr_step="batch")
    with pytest.raises(AlsegError, match="unknown training setting 'lrr'"):
        SegmentationModule(plans, "2d", lrr=1)
    with pytest.raises(AlsegError, match="invalid override"):
        apply_overrides(plans.configuration("2d"), {"patch_size": [15, 16]})
    with pytest.raises(AlsegError, match="no configuration"):
        SegmentationModule(plans, "3d_lowres")


def test_fit_validate_and_checkpoint_round_trip(tmp_path):
    import lightning.pytorch as pl

    cache = write_cache(tmp_path / "cache", n=3)
    plans = tiny_plans(iterations_per_epoch=2)
    module = SegmentationModule(plans, "3d_fullres", epochs=1)
    regions = [whole_case_region(cache, "case_000")]
    dm = SegDataModule(cache, module.config, regions, val_cases=["case_001", "case_002"], num_workers=0)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=dm)
    (metrics,) = trainer.validate(module, datamodule=dm, verbose=False)
    assert set(metrics) == {"dice_mean", "dice_Anterior", "dice_Posterior"}
    assert metrics["dice_mean"] == pytest.approx((metrics["dice_Anterior"] + metrics["dice_Posterior"]) / 2, abs=1e-6)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = SegmentationModule.load_from_checkpoint(path)
    assert loaded.config == module.config and loaded.hparams["overrides"] == {"epochs": 1}
    x = torch.randn(2, 1, *module.config.patch_size)
    module.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(module(x), loaded(x))


def _train(tmp_path, cache, out="out", **kw):
    return train(tiny_plans(), kw.pop("config", "2d"), cache, tmp_path / out, num_workers=0, progress=False, **kw)


def test_train_writes_metrics_and_checkpoint_resumes_and_fine_tunes(tmp_path):
    cache = write_cache(tmp_path / "cache", n=5)
    t0 = time.perf_counter()
    result = _train(tmp_path, cache)  # the plan: 2 epochs x 3 iterations
    elapsed = time.perf_counter() - t0
    out = tmp_path / "out"
    rows = read_metrics(out / "metrics.csv")
    assert (out / "metrics.csv").read_text().splitlines()[0] == ",".join(COLUMNS)
    assert [r["epoch"] for r in rows] == [0, 1]
    assert all(not math.isnan(r[c]) for r in rows for c in COLUMNS)
    assert result == rows[-1]
    assert (out / "model.ckpt").is_file() and (out / "checkpoints" / "last.ckpt").exists()
    model = SegmentationModule.load_from_checkpoint(out / "model.ckpt")
    assert model.config.trainer.epochs == 2
    print(f"train(): 2 epochs x 3 iterations in {elapsed:.1f} s")

    with pytest.raises(AlsegError, match="--resume"):
        _train(tmp_path, cache)
    with pytest.raises(AlsegError, match="no checkpoint to resume"):
        _train(tmp_path, cache, out="other", resume=True)

    # resume: one more epoch, the first rows kept as they were
    _train(tmp_path, cache, epochs=3, resume=True)
    rows3 = read_metrics(out / "metrics.csv")
    assert [r["epoch"] for r in rows3] == [0, 1, 2] and rows3[:2] == rows

    # fine-tune from the final weights with a fresh schedule, validating only at the end
    ft = _train(tmp_path, cache, out="ft", init_checkpoint=out / "model.ckpt", epochs=2, iters_per_epoch=1, val_every=5)
    ft_rows = read_metrics(tmp_path / "ft" / "metrics.csv")
    assert math.isnan(ft_rows[0]["dice_mean"]) and not math.isnan(ft["dice_mean"]) and ft["epoch"] == 1


def test_load_weights(tmp_path):
    cache = write_cache(tmp_path / "cache", n=5)
    _train(tmp_path, cache, config="3d_fullres", epochs=1, iters_per_epoch=1)
    ckpt = tmp_path / "out" / "model.ckpt"
    fresh = SegmentationModule(tiny_plans(), "3d_fullres")
    load_weights(fresh, ckpt)
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(v, saved[k]) for k, v in fresh.state_dict().items())
    other = SegmentationModule(tiny_plans(features=(4, 8, 16, 16)), "3d_fullres")
    with pytest.raises(AlsegError, match="does not match"):
        load_weights(other, ckpt)
    with pytest.raises(AlsegError, match="not found"):
        load_weights(fresh, tmp_path / "missing.ckpt")


def test_train_is_reproducible(tmp_path):
    cache = write_cache(tmp_path / "cache", n=5)
    kw = dict(config="3d_fullres", epochs=1, iters_per_epoch=2, seed=7)
    a, b = _train(tmp_path, cache, out="a", **kw), _train(tmp_path, cache, out="b", **kw)
    assert a == b
    sa, sb = (torch.load(tmp_path / o / "model.ckpt", weights_only=True)["state_dict"] for o in "ab")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_ddp_spawn_two_processes_on_cpu(tmp_path):
    """2 CPU processes with gloo; about 30-40 s on 2 shared cores (under the 60 s limit)."""
    cache = write_cache(tmp_path / "cache", n=5)
    result = _train(tmp_path, cache, epochs=1, iters_per_epoch=2, devices=2, strategy="ddp_spawn")
    assert [r["epoch"] for r in read_metrics(tmp_path / "out" / "metrics.csv")] == [0]
    assert not math.isnan(result["dice_mean"])
    assert (tmp_path / "out" / "model.ckpt").is_file()
