"""Models others can load (alseg checkpoint → MONAI DynUNet) and MC dropout on networks alseg did not build."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from builders import tiny_plans
from monai.networks.nets import DynUNet, UNet

from alseg.errors import AlsegError
from alseg.model.module import SegmentationModule
from alseg.model.network import dropout_modules, mc_dropout
from alseg.trained import load_dynunet


@pytest.mark.parametrize("config", ["2d", "3d_fullres"])
def test_alseg_train_checkpoint_loads_into_a_plain_dynunet_with_the_same_logits(config: str, tmp_path: Path):
    torch.manual_seed(0)
    module = SegmentationModule(tiny_plans(), config)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    net, cfg = load_dynunet(path)
    assert type(net) is DynUNet and not net.training
    assert cfg.patch_size == module.config.patch_size
    x = torch.randn(2, 1, *cfg.patch_size)
    module.net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), module.net(x), rtol=1e-4, atol=1e-4)


def test_a_bare_state_dict_outside_a_run_is_a_one_line_error(tmp_path: Path):
    path = tmp_path / "weights.ckpt"
    torch.save({"state_dict": SegmentationModule(tiny_plans(), "2d").state_dict()}, path)
    with pytest.raises(AlsegError, match="holds no plan and lies in no run directory"):
        load_dynunet(path)
    with pytest.raises(AlsegError, match="checkpoint not found"):
        load_dynunet(tmp_path / "missing.ckpt")


def _unet(dropout: float) -> UNet:
    torch.manual_seed(0)
    return UNet(2, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=0, dropout=dropout)


def test_mc_dropout_samples_a_monai_unet_with_dropout_and_restores_it():
    net = _unet(0.1)
    assert len(dropout_modules(net)) > 0
    net.eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        reference = net(x)
        with mc_dropout(net):
            a, b = net(x), net(x)
        assert not torch.allclose(a, b), "MC passes differ"
        assert not net.training and not any(m.training for m in dropout_modules(net))
        torch.testing.assert_close(net(x), reference)
        with mc_dropout(net, p=0.5):
            assert all(m.p == 0.5 for m in dropout_modules(net))
        assert all(m.p == 0.1 for m in dropout_modules(net))


def test_mc_dropout_on_a_network_without_dropout_is_a_one_line_error():
    with pytest.raises(AlsegError, match="UNet has only dropout modules of rate 0") as info:
        with mc_dropout(_unet(0.0)):  # MONAI builds nn.Dropout(p=0) modules
            pass
    assert "\n" not in str(info.value)
    plain = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1))
    with pytest.raises(AlsegError, match=r"Sequential has no dropout modules \(torch.nn.Dropout\*\)"):
        with mc_dropout(plain):
            pass
