"""DiffusionNAG: encoding, the VE-SDE loss and sampler against exact scores, guidance, masks, metrics."""

from __future__ import annotations

import pytest
import torch

from studio.core.params import ParamError, validate
from studio.data import nasbench as nb
from studio.methods import nag

A = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
B = "|avg_pool_3x3~0|+|none~0|skip_connect~1|+|none~0|none~1|avg_pool_3x3~2|"


def test_cells_encode_to_signed_one_hots_and_decode_back():
    x = nag.encode([A, B])
    assert x.shape == (2, 8, 7) and set(x.unique().tolist()) == {-1.0, 1.0}
    assert nag.decode(x) == [A, B]
    assert nag.decode(x + 0.9 * torch.sign(-x).clamp(max=0)) == [A, B]  # thresholded at 0 in [-1, 1]
    two_ops = x.clone()
    two_ops[0, 3] = 1  # a second operation on node 3
    assert nag.decode(two_ops) == [None, B]


def test_validity_uniqueness_novelty_follow_the_official_definitions():
    out = nag.vun([A, A, B, None], train_archs={A})
    assert out == {"validity": 0.75, "uniqueness": 2 / 3, "novelty": 0.5}
    assert nag.vun([None, None], set()) == {"validity": 0.0, "uniqueness": 0.0, "novelty": 0.0}


class ExactScore(torch.nn.Module):
    """The exact VE score of an equal mixture of the given cells."""

    def __init__(self, archs):
        super().__init__()
        self.points = nag.encode(archs)

    def forward(self, x, s):
        s2 = s ** 2
        d = x[:, None] - self.points[None]                              # (B, K, 8, 7)
        w = torch.softmax(-(d ** 2).sum((2, 3)) / (2 * s2[:, None]), 1)  # posterior weights (B, K)
        return -(w[:, :, None, None] * d).sum(1) / s2[:, None, None]


def test_dsm_loss_vanishes_for_the_exact_score_of_one_cell():
    x0 = nag.encode([A] * 64)
    gen = torch.Generator().manual_seed(0)
    assert nag.dsm_loss(ExactScore([A]), x0, gen) < 1e-8
    assert nag.dsm_loss(lambda x, s: torch.zeros_like(x), x0, gen) > 10


def test_the_pc_sampler_lands_on_the_data_and_guidance_moves_it():
    gen = torch.Generator().manual_seed(0)
    fn = nag.guided_score(ExactScore([A, B]))
    cells = nag.decode(nag.pc_sample(fn, 200, gen, steps=100))
    assert set(cells) == {A, B} and 0.3 < cells.count(B) / 200 < 0.7

    class TowardsB(torch.nn.Module):  # a "predictor" that rises towards B
        def forward(self, x, s, task):
            return -((x - nag.encode([B])) ** 2).sum((1, 2))

    guided = nag.guided_score(ExactScore([A, B]), TowardsB(), torch.zeros(1), scale=1.0)
    cells = nag.decode(nag.pc_sample(guided, 200, torch.Generator().manual_seed(0), steps=100))
    assert cells.count(B) / 200 > 0.95


def test_attention_follows_the_cell_reachability():
    from studio.nets.nag import ScoreNet, reach_mask

    r = reach_mask()
    assert r[0, 1:].all() and not r[7].any() and r[1, 4] and r[1, 6] and not r[1, 2] and not r[6, 1] and not r.diagonal().any()
    net = ScoreNet(n_layers=1).eval()  # one layer: deeper, node 7's uniform row (nothing reachable) mixes all
    x = nag.encode([A])
    y = x.clone()
    y[0, 1] = -y[0, 1]  # change node 1: node 6 cannot reach it, node 0 can
    s = torch.tensor([1.0])
    with torch.no_grad():
        a, b = net(x, s), net(y, s)
    torch.testing.assert_close(a[0, 6], b[0, 6])
    assert not torch.allclose(a[0, 0], b[0, 0])


def test_predictor_reads_the_task_and_learns_the_table():
    from studio.train import nag as train_nag

    table = {"all ten": {A: {"val_acc": 0.9}, B: {"val_acc": 0.2}}, "even/odd": {A: {"val_acc": 0.95}}}
    net, history = train_nag.train_predictor(("all ten", "even/odd"), steps=60, progress=False, table=table)
    assert sum(history[-10:]) < sum(history[:10])
    codes = {t: net.encode_task(nag.task_sets(t)) for t in ("all ten", "even/odd")}
    assert codes["all ten"].shape == (56,) and not torch.allclose(codes["all ten"], codes["even/odd"])
    pred = nag.predict(net, [A, B], codes["all ten"])
    assert pred[0] > pred[1] + 0.3
    assert nag.task_sets("even/odd").shape == (2, nag.N_PER_CLASS, 64)
    assert nag.task_sets("0-4").shape == (5, nag.N_PER_CLASS, 64)


@pytest.mark.parametrize("bad", [{"scale": -1.0}, {"scale": nag.MAX_SCALE + 1}, {"n_cells": 0},
                                 {"task": "cifar"}, {"steps": 5}])
def test_out_of_range_generation_parameters_are_refused(bad):
    with pytest.raises(ParamError):
        validate(nag.GenerateParams(**bad))


def test_score_split_is_half_the_space_and_fixed():
    from studio.train.nag import score_split

    split = score_split()
    assert len(split) == len(nb.all_archs()) // 2 == len(set(split)) and split == score_split()


def test_top_one_percent_never_holds_more_than_one_percent_despite_ties():
    values = {f"c{i}": v for i, v in enumerate([0.5] * 90 + [0.9] * 8 + [0.95, 0.97])}
    assert nag.top_fraction(values, 0.01) == 0.97
    assert nag.top_fraction(values, 0.02) == 0.95
    assert nag.top_fraction(values, 0.10) == 0.9  # 0.9 and up is exactly 10%
    curve = nag.best_so_far(["c0", "c0", "c98", "c99"], values)
    assert curve.tolist() == [0.5, 0.95, 0.97] and nag.trained_to_reach(curve, 0.97) == 3
    assert nag.trained_to_reach(curve, 0.99) == float("inf")
