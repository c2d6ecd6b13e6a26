"""The typed strategy API: options validated before work, configured instances, the registry,
and one batch-uncertainty measure for every strategy (paper Appendix D, Fig. 5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_baselines import make_ctx, tiny_net
from torch import nn

from alseg.data.pool import Pool
from alseg.errors import AlsegError
from alseg.model.dropout import MCDropout
from alseg.scoring.pool_inference import measure_batch_uncertainty
from alseg.strategies import (
    FeatureNetwork,
    SelectionContext,
    available,
    get_strategy,
    parse_strategy_options,
    select_batch,
)
from alseg.strategies.base import StrategyOptions


# ----------------------------------------------------------------------------- options
def test_get_strategy_returns_a_configured_instance():
    s = get_strategy("usimf", query_size=1000)
    assert s.options.query_size == 1000 and s.options.fisher_kernel == "raw"
    t = get_strategy("usimf", parse_strategy_options("usimf", {"query_size": "1000", "query_multiset": "false"}))
    assert t.options.query_size == 1000 and t.options.query_multiset is False
    assert get_strategy("badge").options.seeding == "ash"
    assert get_strategy("random-fg", fg_share="0.5").options.fg_share == 0.5


def test_unknown_option_names_the_valid_keys_in_one_line():
    with pytest.raises(AlsegError) as e:
        parse_strategy_options("usimf", {"quer_size": "5"})
    text = str(e.value)
    assert "quer_size" in text and "query_size" in text and "\n" not in text
    with pytest.raises(
        AlsegError,
        match="unknown option query_size for strategy 'random' — valid keys: batch_uncertainty, mc_passes_per_forward",
    ):
        parse_strategy_options("random", {"query_size": "5"})


def test_bad_value_names_the_key_and_what_is_expected():
    with pytest.raises(
        AlsegError, match=r"invalid option query_size='abc' for strategy 'usimc' — expected 'auto' .* positive integer"
    ):
        parse_strategy_options("usimc", {"query_size": "abc"})
    with pytest.raises(AlsegError, match="seeding='kmeans' .* 'ash'"):
        parse_strategy_options("badge", {"seeding": "kmeans"})
    with pytest.raises(AlsegError, match="fg_share"):
        parse_strategy_options("random-fg", {"fg_share": "2"})
    with pytest.raises(AlsegError, match="stb_batches"):
        get_strategy("stochastic-batches", stb_batches=0)


def test_unknown_strategy_lists_the_names():
    with pytest.raises(
        AlsegError, match="unknown strategy 'usim' — choose one of: badge, bald, cla-pe, clasp-pe, coreset"
    ):
        parse_strategy_options("usim", {})


def test_every_strategy_has_a_forbidding_options_model():
    for name in available():
        s = get_strategy(name)
        assert isinstance(s.options, StrategyOptions) and s.options.model_config["extra"] == "forbid"


def test_loop_refuses_a_misspelled_option_before_any_work(tmp_path):
    from alseg.active.loop import LoopDriver
    from alseg.active.settings import LoopSettings

    with pytest.raises(AlsegError, match="quer_size"):
        opts = LoopSettings.checked(strategy="usimf", strategy_options={"quer_size": "5"})
        LoopDriver(tmp_path / "no-such-dataset", tmp_path / "run", opts)
    assert not (tmp_path / "run").exists()


def test_segnetwork_is_a_feature_network():
    net, _ = tiny_net()
    assert isinstance(net, FeatureNetwork)


# ----------------------------------------------------------------------------- batch uncertainty
ALL = ["random", "entropy", "meanstd", "bald", "stochastic-batches", "coreset", "badge", "usimc", "usimf"]


def test_the_same_batch_gives_the_same_uncertainty_under_every_strategy():
    """Budget = the unlabelled pool: every strategy selects the same items, so every record
    must hold the same number (the old code reused each strategy's own passes)."""
    values = {}
    for name in ALL:
        ctx = make_ctx(labelled=tuple(range(12)), budget=4)  # 16 items, 4 unlabelled
        opts = {"embedding_dim": 50} if name.startswith("usim") else {}
        sel = select_batch(get_strategy(name, **opts), ctx, uncertainty_seed=123)
        assert sorted(sel.indices) == list(range(12, 16))
        values[name] = sel.batch_uncertainty
    assert len(set(values.values())) == 1 and values["random"] > 0, values
    # and it is the one function, whatever order the items come in
    ctx = make_ctx(labelled=tuple(range(12)), budget=4)
    assert measure_batch_uncertainty(ctx, np.array([15, 13, 12, 14]), 123) == values["random"]


def test_a_different_strategy_does_not_change_the_measure_of_its_batch():
    """Two strategies that pick different batches: re-measuring either batch with the round's
    seed gives the recorded number, however much of the round's generator the strategy used."""
    for name in ("meanstd", "badge"):
        sel = select_batch(get_strategy(name), make_ctx(seed=4), uncertainty_seed=9)
        again = measure_batch_uncertainty(make_ctx(seed=99), sel.indices, 9)
        assert sel.batch_uncertainty == pytest.approx(again, rel=1e-6)


class CyclicMask(MCDropout):
    """A 'dropout' whose masks are fixed: pass t multiplies by MASKS[t % 2]."""

    MASKS = (1.0, 0.0)

    def __init__(self):
        super().__init__(0.0)
        self.t = 0

    def forward(self, x):
        if not self.training:
            return x
        m = self.MASKS[self.t % len(self.MASKS)]
        self.t += 1
        return x * m


class TwoClassNet(nn.Module):
    """logits = (0, x * mask_t): p_t(1) = sigmoid(x) when the mask is 1, 0.5 when it is 0."""

    def __init__(self):
        super().__init__()
        self.mask = CyclicMask()

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), self.mask(x)], dim=1)


def test_batch_uncertainty_by_hand_with_fixed_dropout_masks():
    """T = 2 passes with masks 1 and 0: per pixel std_t p_t(1) = |sigmoid(c) - 0.5| / 2 (the
    population std of two values), summed over the 16 x 16 pixels and the selected items; the
    background column is not counted."""
    shapes = {"a": (3, 16, 16)}
    values = [2.0, -1.0, 0.5]
    vol = np.stack([np.full((16, 16), v, np.float32) for v in values])[None]
    ctx = SelectionContext(
        model=TwoClassNet(),
        pool=Pool.build(shapes, "2d", (16, 16)),
        labelled=np.zeros(3, bool),
        budget=2,
        rng=np.random.default_rng(0),
        load_image=lambda c: vol,
        labelled_voxels_per_class=np.ones(2),
        n_classes=2,
        mc_passes=2,
        dropout_mc=0.1,
        batch_size=8,
        show_progress=False,
    )
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    expected = sum(256 * abs(sig(values[i]) - 0.5) / 2 for i in (0, 2))
    assert measure_batch_uncertainty(ctx, np.array([2, 0]), seed=0) == pytest.approx(expected, rel=1e-5)


def test_options_shared_by_several_strategies_are_split_and_checked():
    from alseg.strategies import options_for

    out = options_for(
        ["random", "usimf", "badge"], {"query_size": "1000", "seeding": "ash", "batch_uncertainty": "false"}
    )
    assert out == {  # split, and typed as each strategy's options type them
        "random": {"batch_uncertainty": False},
        "usimf": {"query_size": 1000, "batch_uncertainty": False},
        "badge": {"seeding": "ash", "batch_uncertainty": False},
    }
    with pytest.raises(AlsegError, match="unknown option quer_size for strategies random, usimf"):
        options_for(["random", "usimf"], {"quer_size": "5"})
    with pytest.raises(AlsegError, match="invalid option seeding"):
        options_for(["badge"], {"seeding": "x"})


def test_usimf_defaults_follow_the_redundancy_study():
    """usimf drops FLQMI's relevance term (eta = 0: no repeated content on 12/12 duplicated Task04
    cases, against 4/12 with eta = 1); usimc keeps the paper's eta = 1 (11/12); both keep the
    query multiset and usimf the paper's raw Fisher kernel."""
    usimf, usimc = get_strategy("usimf"), get_strategy("usimc")
    assert usimf.options.eta == 0.0 and usimc.options.eta == 1.0
    assert usimf.options.fisher_kernel == "raw" and usimf.options.query_multiset and usimc.options.query_multiset
    assert get_strategy("usimf", eta="1").options.eta == 1.0
