"""DiffusionNAG: encoding, the VE-SDE loss and sampler against exact scores, guidance, masks, metrics,
and the method's contract: run and train_cell as generators of progress, then one result."""

from __future__ import annotations

from typing import get_args

import pytest
import torch

from studio.core import nas_metrics
from studio.core.params import ParamError, validate
from studio.core.sampling import Progress, run_to_end
from studio.data import nasbench as nb
from studio.methods import method, nag
from studio.train import nag as train_nag
from tests.contract import MethodContract

A = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
B = "|avg_pool_3x3~0|+|none~0|skip_connect~1|+|none~0|none~1|avg_pool_3x3~2|"


def test_cells_encode_to_signed_one_hots_and_decode_back():
    x = nb.encode([A, B])
    assert x.shape == (2, 8, 7) and set(x.unique().tolist()) == {-1.0, 1.0}
    assert nb.decode(x) == [A, B]
    assert nb.decode(x + 0.9 * torch.sign(-x).clamp(max=0)) == [A, B]  # thresholded at 0 in [-1, 1]
    two_ops = x.clone()
    two_ops[0, 3] = 1  # a second operation on node 3
    assert nb.decode(two_ops) == [None, B]


def test_validity_uniqueness_novelty_follow_the_official_definitions():
    out = nas_metrics.vun([A, A, B, None], train_archs={A})
    assert out == {"validity": 0.75, "uniqueness": 2 / 3, "novelty": 0.5}
    assert nas_metrics.vun([None, None], set()) == {"validity": 0.0, "uniqueness": 0.0, "novelty": 0.0}


class ExactScore(torch.nn.Module):
    """The exact VE score of an equal mixture of the given cells."""

    def __init__(self, archs):
        super().__init__()
        self.points = nb.encode(archs)

    def forward(self, x, s):
        s2 = s ** 2
        d = x[:, None] - self.points[None]                              # (B, K, 8, 7)
        w = torch.softmax(-(d ** 2).sum((2, 3)) / (2 * s2[:, None]), 1)  # posterior weights (B, K)
        return -(w[:, :, None, None] * d).sum(1) / s2[:, None, None]


def test_dsm_loss_vanishes_for_the_exact_score_of_one_cell():
    x0 = nb.encode([A] * 64)
    gen = torch.Generator().manual_seed(0)
    assert train_nag.dsm_loss(ExactScore([A]), x0, gen) < 1e-8
    assert train_nag.dsm_loss(lambda x, s: torch.zeros_like(x), x0, gen) > 10


def test_the_pc_sampler_lands_on_the_data_and_guidance_moves_it():
    gen = torch.Generator().manual_seed(0)
    fn = nag.guided_score(ExactScore([A, B]))
    cells = nb.decode(run_to_end(nag.pc_sample(fn, 200, gen, steps=100)))
    assert set(cells) == {A, B} and 0.3 < cells.count(B) / 200 < 0.7

    class TowardsB(torch.nn.Module):  # a "predictor" that rises towards B
        def forward(self, x, s, task):
            return -((x - nb.encode([B])) ** 2).sum((1, 2))

    guided = nag.guided_score(ExactScore([A, B]), TowardsB(), torch.zeros(1), scale=1.0)
    cells = nb.decode(run_to_end(nag.pc_sample(guided, 200, torch.Generator().manual_seed(0), steps=100)))
    assert cells.count(B) / 200 > 0.95


def test_attention_follows_the_cell_reachability():
    from studio.nets.nag import ScoreNet, reach_mask

    r = reach_mask()
    assert r[0, 1:].all() and not r[7].any() and r[1, 4] and r[1, 6] and not r[1, 2] and not r[6, 1] and not r.diagonal().any()
    net = ScoreNet(n_layers=1).eval()  # one layer: deeper, node 7's uniform row (nothing reachable) mixes all
    x = nb.encode([A])
    y = x.clone()
    y[0, 1] = -y[0, 1]  # change node 1: node 6 cannot reach it, node 0 can
    s = torch.tensor([1.0])
    with torch.no_grad():
        a, b = net(x, s), net(y, s)
    torch.testing.assert_close(a[0, 6], b[0, 6])
    assert not torch.allclose(a[0, 0], b[0, 0])


def test_masked_attention_computes_the_attention_modules_forward_and_true_gradients():
    """The saved weights compute what ``nn.MultiheadAttention`` computed (so the zoo is unchanged), and the
    gradient through the cell reader, in float32 as sampling and training run it, is float64's, which
    ``gradcheck`` holds to finite differences. The attention module's own CPU kernel (torch 2.13)
    misses this on the output node's fully masked row: its gradients were off by their own size."""
    from studio.nets.nag import GraphEncoder, masked_attention

    torch.manual_seed(0)
    enc = GraphEncoder(d_model=8, n_layers=2, n_heads=2, d_ff=16).eval()
    h = torch.randn(3, 8, 8)
    block = enc.blocks[0]
    torch.testing.assert_close(masked_attention(block.attn, h, enc.bias == 0),
                               block.attn(h, h, h, attn_mask=enc.bias, need_weights=False)[0])
    x, sigma = torch.randn(3, 8, 7), torch.tensor([0.5, 1.0, 2.0])

    def grad(net, x, sigma):
        x = x.clone().requires_grad_(True)
        return torch.autograd.grad((net(x, sigma) * torch.linspace(-1, 1, 7)).sum(), x)[0]

    enc64 = GraphEncoder(d_model=8, n_layers=2, n_heads=2, d_ff=16).eval()
    enc64.load_state_dict(enc.state_dict())
    enc64.double()
    x64, s64 = x.double().requires_grad_(True), sigma.double()
    assert torch.autograd.gradcheck(lambda z: enc64(z, s64), (x64,), eps=1e-6, atol=1e-5)
    torch.testing.assert_close(grad(enc, x, sigma), grad(enc64, x.double(), s64).float(), rtol=1e-4, atol=1e-5)


def test_predictor_reads_the_task_and_learns_the_table():
    table = {"all ten": {A: {"val_acc": 0.9}, B: {"val_acc": 0.2}}, "even/odd": {A: {"val_acc": 0.95}}}
    net, history = train_nag.train_predictor(("all ten", "even/odd"), steps=60, progress=False, table=table)
    assert sum(history[-10:]) < sum(history[:10])
    codes = {t: net.encode_task(nb.task_sets(t)) for t in ("all ten", "even/odd")}
    assert codes["all ten"].shape == (56,) and not torch.allclose(codes["all ten"], codes["even/odd"])
    pred = nag.predict(net, [A, B], codes["all ten"])
    assert pred[0] > pred[1] + 0.3
    assert nb.task_sets("even/odd").shape == (2, nb.N_PER_CLASS, 64)
    assert nb.task_sets("0-4").shape == (5, nb.N_PER_CLASS, 64)


@pytest.mark.parametrize("bad", [{"scale": -1.0}, {"scale": nag.MAX_SCALE + 1}, {"n_cells": 0},
                                 {"task": "cifar"}, {"steps": 5}])
def test_out_of_range_generation_parameters_are_refused(bad):
    with pytest.raises(ParamError):
        validate(nag.Params(**bad))


def test_the_tasks_a_person_can_pick_are_the_tasks_with_data():
    assert get_args(nag.Task) == tuple(nb.TASKS) == train_nag.TASKS


def test_score_split_is_half_the_space_and_fixed():
    split = nb.score_split()
    assert len(split) == len(nb.all_archs()) // 2 == len(set(split)) and split == nb.score_split()


def test_top_one_percent_never_holds_more_than_one_percent_despite_ties():
    values = {f"c{i}": v for i, v in enumerate([0.5] * 90 + [0.9] * 8 + [0.95, 0.97])}
    assert nb.top_fraction(values, 0.01) == 0.97
    assert nb.top_fraction(values, 0.02) == 0.95
    assert nb.top_fraction(values, 0.10) == 0.9  # 0.9 and up is exactly 10%
    curve = nas_metrics.best_so_far(["c0", "c0", "c98", "c99"], values)
    assert curve.tolist() == [0.5, 0.95, 0.97] and nas_metrics.trained_to_reach(curve, 0.97) == 3
    assert nas_metrics.trained_to_reach(curve, 0.99) == float("inf")


def test_a_search_picks_its_cell_by_validation_and_random_orders_are_random_search():
    import numpy as np

    values = {"a": 0.9, "b": 0.95, "c": 0.95, "d": 0.5}
    # distinct cells only; the best validation so far, the earlier one on a tie
    assert nas_metrics.chosen_so_far(["d", "a", "a", "c", "b"], values) == ["d", "a", "c", "c"]
    space = {f"c{i}": (i * 37 % 100) / 100 for i in range(100)}
    orders = nas_metrics.random_orders(space, 5, 20, seed=3)
    assert all(len(set(o)) == 20 for o in orders) and len({tuple(o) for o in orders}) == 5
    assert np.allclose([nas_metrics.best_so_far(o, space) for o in orders],
                       nas_metrics.random_search_curves(space, 5, 20, seed=3))


def test_bootstrap_intervals_of_medians_and_their_ratio():
    inf = float("inf")
    med, lo, hi = nas_metrics.bootstrap_median([3, 5, 7, 9, 11, inf])  # a run that never reached sorts last
    assert med == 8 and 3 <= lo <= med <= hi
    assert nas_metrics.bootstrap_median([4, 4, 4]) == (4, 4, 4)
    assert nas_metrics.bootstrap_ratio([100] * 8, [10] * 8) == (10, 10, 10)
    ratio, lo, hi = nas_metrics.bootstrap_ratio([80, 100, 120, 90, 110], [9, 10, 11, 10, 12])
    assert ratio == 10 and lo < 10 < hi and lo > 5


class TestNagContract(MethodContract):
    method_id = "nag"
    bad = [({"scale": -1.0}, "Guidance scale"), ({"steps": 5}, "Sampler steps"), ({"task": "cifar"}, "Task"),
           ({"model": "digits-cond"}, "unknown model")]

    @pytest.fixture
    def manager(self, nag_manager):
        return nag_manager

    def params(self):
        return nag.Params(task="even/odd", scale=10.0, n_cells=6, seed=3, steps=10)

    def output(self, result):
        return result.generated.archs, result.generated.predicted, result.rows


def test_run_yields_a_sampler_step_per_step_then_one_result(nag_manager):
    p = nag.Params(task="even/odd", scale=10.0, n_cells=6, seed=3, steps=12)
    *steps, result = nag.run(p, nag_manager)
    assert [s.step for s in steps] == list(range(1, 13)) and all(isinstance(s, nag.PCStep) for s in steps)
    assert steps[-1].total == 12 and steps[-1].x_mean.shape == (6, 8, 7)
    assert isinstance(result, nag.NAGResult) and len(result.generated.archs) == 6
    assert result.parameters == {"method": "DiffusionNAG", "model": "nag-digits", "task": "even/odd", "scale": 10.0,
                                 "n_cells": 6, "seed": 3, "steps": 12}


def test_run_cells_are_the_sampler_cells_of_the_same_seed(nag_manager):
    p = nag.Params(task="0-4", scale=5.0, n_cells=5, seed=2, steps=10)
    with nag_manager.use("nag-digits") as m:
        code = nag.task_code(m.predictor, "0-4")
        cells = run_to_end(nag.sample_cells(m.score, m.predictor, code, 5.0, 5, 2, 10))
    assert run_to_end(nag.run(p, nag_manager)).generated.archs == cells


def test_run_refuses_a_model_it_cannot_drive(nag_manager):
    with pytest.raises(ParamError, match="unknown model"):
        next(nag.run(nag.Params(model="digits-cond", n_cells=2, steps=10), nag_manager))
    assert method("nag").models(nag_manager) == [nag.Params().model] == ["nag-digits"]


EXAMPLE = "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_1x1~1|none~2|"


def test_training_a_cell_yields_its_steps_then_the_comparison(monkeypatch):
    from studio.train import nasbench as run_nb

    monkeypatch.setitem(run_nb.RECIPE, "epochs", 1)
    *steps, result = nag.train_cell(nag.TrainParams(arch=EXAMPLE, task="0-4"))
    assert all(isinstance(s, Progress) and "loss" in s.info for s in steps)
    assert [s.step for s in steps] == list(range(1, steps[-1].total + 1))
    assert isinstance(result, nag.TrainResult) and not result.stopped
    assert result.row == run_nb.train_many([EXAMPLE], "0-4")[0]
    assert "validation accuracy" in result.message and "1 epochs" in result.message
    assert result.parameters["arch"] == EXAMPLE and result.parameters["task"] == "0-4"


def test_a_stopped_training_still_yields_what_it_measured(monkeypatch):
    from studio.train import nasbench as run_nb

    monkeypatch.setitem(run_nb.RECIPE, "epochs", 2)
    seen = []
    items = []
    for item in nag.train_cell(nag.TrainParams(arch=EXAMPLE, task="even/odd"), stop=lambda: len(seen) >= 5):
        items.append(item)
        if isinstance(item, Progress):
            seen.append(item)
    *steps, result = items
    assert len(steps) == 5 and result.stopped and "stopped after 5 of" in result.message
    assert 0 <= result.row["val_acc"] <= 1


@pytest.mark.parametrize("arch, error, match", [
    ("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|", nb.ArchError, "unknown operation"),
    ("", nb.ArchError, "empty"), ("x" * 500, ParamError, "at most")])
def test_bad_cells_are_refused_before_any_training(arch, error, match):
    with pytest.raises(error, match=match):
        next(nag.train_cell(nag.TrainParams(arch=arch)))
    with pytest.raises(ParamError, match="Task"):
        next(nag.train_cell(nag.TrainParams(task="cifar")))


def test_every_task_has_a_chosen_scale_in_range_and_the_default_is_all_tens():
    from typing import get_args

    from studio.methods import nag

    assert set(nag.TASK_SCALE) == set(get_args(nag.Task))
    assert all(0.0 < w <= nag.MAX_SCALE for w in nag.TASK_SCALE.values())
    assert nag.Params().scale == nag.TASK_SCALE["all ten"]
