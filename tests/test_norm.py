"""Instance norm as a group norm, against the reference ``nn.InstanceNorm``: values, gradients,
state dicts, and the network built from a plan using it everywhere MONAI put an instance norm."""

from __future__ import annotations

import pytest
import torch
from builders import tiny_plans
from torch import nn

from alseg.model.network import build_network
from alseg.model.norm import InstanceNorm, replace_instance_norms


@pytest.mark.parametrize("dims,affine", [(2, True), (3, True), (2, False)])
def test_same_values_and_gradients_as_instance_norm(dims, affine):
    torch.manual_seed(0)
    ref = (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(6, eps=1e-5, affine=affine)
    if affine:  # non-trivial affine parameters, so a wrong broadcast would show
        nn.init.normal_(ref.weight)
        nn.init.normal_(ref.bias)
    ours = InstanceNorm.from_instance_norm(ref)
    shape = (3, 6, 9, 7) if dims == 2 else (2, 6, 5, 6, 4)
    x = (torch.randn(shape) * 3 + 2).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    up = torch.randn(shape)
    y_ref, y = ref(x), ours(x2)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    # per sample and channel: zero mean, unit variance before the affine
    if not affine:
        flat = y.detach().flatten(2)
        torch.testing.assert_close(flat.mean(2), torch.zeros(flat.shape[:2]), atol=1e-5, rtol=0)
        torch.testing.assert_close(flat.var(2, unbiased=False), torch.ones(flat.shape[:2]), atol=1e-3, rtol=0)
    (y_ref * up).sum().backward()
    (y * up).sum().backward()
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-4, atol=1e-5)
    if affine:
        torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-4)


def test_output_is_not_a_view_so_inplace_relu_needs_no_copy():
    """The reason for the swap: an in-place op after the reference records a CopySlices node
    (a full activation copy in backward); after ours it does not."""
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    ref = nn.LeakyReLU(inplace=True)(nn.InstanceNorm2d(4, affine=True)(x))
    ours = nn.LeakyReLU(inplace=True)(InstanceNorm(4)(x))
    assert "CopySlices" in _graph_nodes(ref)
    assert "CopySlices" not in _graph_nodes(ours)


def _graph_nodes(t: torch.Tensor) -> set[str]:
    seen, stack = set(), [t.grad_fn]
    while stack:
        f = stack.pop()
        if f is not None and f not in seen:
            seen.add(f)
            stack.extend(g for g, _ in f.next_functions)
    return {type(f).__name__ for f in seen}


def test_state_dicts_are_interchangeable():
    ref = nn.InstanceNorm3d(5, affine=True)
    nn.init.normal_(ref.weight)
    ours = InstanceNorm(5)
    ours.load_state_dict(ref.state_dict())
    torch.testing.assert_close(ours.weight, ref.weight)
    back = nn.InstanceNorm3d(5, affine=True)
    back.load_state_dict(ours.state_dict())
    torch.testing.assert_close(back.bias, ref.bias)


def test_running_statistics_are_refused():
    with pytest.raises(ValueError, match="running statistics"):
        InstanceNorm.from_instance_norm(nn.InstanceNorm2d(3, track_running_stats=True))


def test_network_from_plan_has_no_instance_norm_left_and_computes_the_same():
    """Every MONAI instance norm of the DynUNet is swapped (both of each block's, encoder and
    decoder); swapping them back gives the same logits."""
    cfg = tiny_plans(n_stages=3, features=(4, 8, 8)).configuration("2d")
    torch.manual_seed(0)
    net = build_network(cfg, in_channels=1, n_classes=3).eval()
    norms = [m for m in net.modules() if isinstance(m, InstanceNorm)]
    assert len(norms) == 2 * (len(net.encoder_blocks()) + len(net.decoder_blocks()))
    assert not any(isinstance(m, nn.modules.instancenorm._InstanceNorm) for m in net.modules())
    assert replace_instance_norms(net) == 0  # idempotent
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        ours = net(x)
        for block in net.encoder_blocks() + net.decoder_blocks():
            for name in ("norm1", "norm2"):
                gn = getattr(block, name)
                ref = nn.InstanceNorm2d(gn.num_channels, eps=gn.eps, affine=True)
                ref.load_state_dict(gn.state_dict())
                setattr(block, name, ref)
        torch.testing.assert_close(net(x), ours, rtol=1e-4, atol=1e-5)
