"""InvDiff's pieces (studio.core.invdiff) and the biased shapes world, against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from studio.core import invdiff as I
from studio.core.metrics import bias_score
from studio.data import biased_shapes as B
from studio.data import shapes


def test_mix_follows_the_three_branches_of_the_official_wrapper():
    base, delta = torch.full((2,), 2.0), torch.full((2,), 10.0)
    assert torch.allclose(I.mix(base, delta, 0.8), 0.8 * delta + 0.2 * base)
    assert torch.allclose(I.mix(base, delta, 1.0), delta)
    assert torch.allclose(I.mix(base, delta, 2.0), 2 * delta + base)
    assert torch.allclose(I.mix(base, delta, -1.0), delta + base)
    fn = I.mixed_fn(lambda x, t, c: x + 1, lambda x, t, c: x * 3, 0.5)
    assert torch.allclose(fn(torch.ones(3), 0, {}), torch.full((3,), 2.5))
    base_fn = lambda x, t, c: x  # noqa: E731
    assert I.mixed_fn(base_fn, None, 0.0) is base_fn


def test_the_grouper_keeps_rows_on_the_simplex_and_separates_the_hard_minority():
    rng = np.random.default_rng(0)
    minority = rng.random(600) < 0.1
    losses = np.where(minority, rng.normal(0.5, 0.05, 600), rng.normal(0.1, 0.05, 600)).clip(0.01)
    w = I.infer_groups(losses, groups=4, alpha=3.0, epochs=300)
    assert w.shape == (600, 4) and (w >= 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(600))
    got = I.purity(w, minority.astype(int))  # losses split into more groups than the truth has: purity, not NMI
    assert got["purity"] > 0.95 and got["nmi"] > 0.2, got
    assert max(g["1"] for g in got["groups"].values()) > 0.5  # a group where the 10% minority is the majority
    with pytest.raises(ValueError, match="2 groups"):
        I.infer_groups(losses[:1], groups=2, alpha=0.0)


def test_the_group_loss_is_the_mean_plus_lambda_times_the_variance_of_weighted_group_means():
    per = torch.tensor([1.0, 2.0, 3.0, 6.0])
    w = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    g0, g1 = (1 + 2 + 1.5) / 2.5, (1.5 + 6) / 1.5
    loss, parts = I.group_loss(per, w, lam=2.0)
    mean, var = (g0 + g1) / 2, np.var([g0, g1], ddof=1)
    assert loss.item() == pytest.approx(mean + 2 * var, rel=1e-5) and parts["var"] == pytest.approx(var, rel=1e-5)
    one, _ = I.group_loss(per, torch.ones(4, 1), lam=5.0)  # one group: plain mean, no variance term
    assert one.item() == pytest.approx(per.mean().item(), rel=1e-5)
    empty_group, _ = I.group_loss(per, torch.cat([torch.ones(4, 1), torch.zeros(4, 1)], 1), lam=5.0)
    assert empty_group.item() == pytest.approx(per.mean().item(), rel=1e-5)  # an empty group is dropped


def test_the_bias_score_matches_the_official_formula():
    assert bias_score([90, 10]) == pytest.approx(0.8)
    assert bias_score([50, 50]) == 0.0
    assert bias_score([10, 0, 0]) == pytest.approx((10 + 10 + 0) / 10 / 3)
    with pytest.raises(ValueError):
        bias_score([0, 0])


def test_the_biased_world_is_fixed_skewed_and_mostly_colourless():
    d = B.training_set()
    assert d is B.training_set() and len(d) == B.N_TRAIN and d.images.shape == (B.N_TRAIN, 3, 32, 32)
    assert not d.images.flags.writeable
    for s in B.BIASED_SHAPES:
        colours = [c for sh, c in zip(d.shape, d.colour) if sh == s]
        assert set(colours) == {B.MAJORITY[s], B.MINORITY[s]}
        assert abs(np.mean([c == B.MAJORITY[s] for c in colours]) - B.BIAS) < 0.03
    tri = [c for sh, c in zip(d.shape, d.colour) if sh == "triangle"]
    assert set(tri) == set(shapes.COLOURS)
    named = np.mean([any(c in cap for c in shapes.COLOURS) for cap in d.captions])
    assert abs(named - (1 - B.SHAPE_ONLY - B.NO_COLOUR)) < 0.03
    assert all(shapes.parse_concept(cap)["shape"] == s for cap, s in zip(d.captions, d.shape))
    assert d.minority.sum() == sum(B.MINORITY.get(s) == c for s, c in zip(d.shape, d.colour))
    assert set(np.unique(d.true_groups)) == {0, 1, 2}


# the Debias tab's method, on tiny random models -----------------------------------------------------

from studio.methods import debias  # noqa: E402
from tests.conftest import tiny_shapes_unet  # noqa: E402
from tests.contract import MethodContract  # noqa: E402


def tiny_invdiff():
    """A random tiny delta (the tiny shapes UNet, its output convolution moved off the base's) and random
    soft groups over the biased training set."""
    from studio.core.models import InvDiffModule

    delta = tiny_shapes_unet()
    with torch.no_grad():
        delta.conv_out.weight.add_(torch.randn(delta.conv_out.weight.shape, generator=torch.Generator().manual_seed(1)))
    w = torch.softmax(torch.randn(B.N_TRAIN, 4, generator=torch.Generator().manual_seed(2)), 1)
    return InvDiffModule("invdiff-shapes", delta, {"weights": w}, {"kind": "invdiff", "base": "shapes-t2i"})


def tiny_judge():
    from studio.nets.judges import ShapesGridNet

    torch.manual_seed(0)
    return ShapesGridNet(width=4, feature_dim=16).eval()


def with_tiny_debias(manager):
    """``manager`` (``tiny_manager``: its random ``shapes-t2i`` is the base) plus a random InvDiff module and judge."""
    manager.register("invdiff-shapes", tiny_invdiff, info={"kind": "invdiff", "base": "shapes-t2i"})
    manager.register("judge-shapes", tiny_judge, info={"kind": "judge"})
    return manager


@pytest.fixture
def debias_manager(tiny_manager):
    return with_tiny_debias(tiny_manager)


class TestDebiasContract(MethodContract):
    method_id = "debias"
    bad = [({"prompt": "   "}, "prompt is empty"), ({"n_images": 0}, "Images per model"),
           ({"r": 1.5}, "Mix r"), ({"model": "nope"}, "unknown InvDiff module"), ({"prompt": "x" * 201}, "Prompt")]

    @pytest.fixture
    def manager(self, debias_manager):
        return debias_manager

    def params(self):
        return debias.Params(n_images=3, steps=2)

    def output(self, result):
        return [result.tensors, result.readouts]


def test_r_zero_is_the_biased_model_and_the_readout_counts_every_image(debias_manager):
    from studio.core.sampling import run_to_end

    same = run_to_end(debias.run(debias.Params(n_images=3, steps=2, r=0.0), debias_manager))
    torch.testing.assert_close(same.tensors[0], same.tensors[1], rtol=0, atol=0)
    mixed = run_to_end(debias.run(debias.Params(n_images=3, steps=2, r=0.8), debias_manager))
    torch.testing.assert_close(mixed.tensors[0], same.tensors[0], rtol=0, atol=0)  # the same seeds, the same base
    assert not torch.equal(mixed.tensors[0], mixed.tensors[1])  # the delta moves the samples
    for rd in mixed.readouts.values():
        assert sum(rd["counts"].values()) + rd["missing"] == 3 and set(rd["counts"]) == set(shapes.COLOURS)
    assert mixed.asked == {"shape": "circle", "colour": None, "region": None}
    assert mixed.parameters["base"] == "shapes-t2i" and mixed.parameters["r"] == 0.8
    assert 0 <= mixed.groups["purity"] <= 1 and sum(g["size"] for g in mixed.groups["groups"].values()) == B.N_TRAIN
    assert any("bias score" in n or "no red / blue" in n for n in mixed.notes)


def test_the_colour_readout_reads_the_asked_shape_and_scores_red_against_blue():
    class Reader(torch.nn.Module):  # a judge that reads fixed cells: a red circle and a blue square
        def read(self, x):
            s = torch.zeros(len(x), 9, dtype=torch.long)
            c = torch.zeros(len(x), 9, dtype=torch.long)
            s[:, 2], c[:, 2] = shapes.SHAPES.index("square") + 1, shapes.COLOURS.index("blue")
            s[:, 5], c[:, 5] = shapes.SHAPES.index("circle") + 1, shapes.COLOURS.index("red")
            s[0] = 0  # the first image holds nothing
            return s, c

    x = torch.zeros(4, 3, 32, 32)
    rd = I.colour_readout(Reader(), x, "circle", B.PROMPT_COLOURS)
    assert rd["counts"]["red"] == 3 and rd["missing"] == 1 and rd["bias_score"] == 1.0
    anything = I.colour_readout(Reader(), x, None, B.PROMPT_COLOURS)  # the first occupied cell: the square
    assert anything["counts"]["blue"] == 3
    assert I.colour_readout(Reader(), x, "triangle", B.PROMPT_COLOURS)["bias_score"] is None
