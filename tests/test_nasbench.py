"""The NAS-Bench-201 space on digits: strings, DiffusionNAG's matrices and validity, functional
classes, the cell network, and the resumable ground-truth run."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from studio.data import nasbench as nb

EXAMPLE = "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_1x1~1|none~2|"


def test_strings_round_trip_and_the_space_has_15625_cells():
    assert nb.parse(EXAMPLE) == ("nor_conv_3x3", "none", "skip_connect", "avg_pool_3x3", "nor_conv_1x1", "none")
    assert nb.to_string(nb.parse(EXAMPLE)) == EXAMPLE
    archs = nb.all_archs()
    assert len(archs) == 15625 == len(set(archs))


@pytest.mark.parametrize("bad, match", [
    ("", "empty"), ("|nor_conv_3x3~0|+|none~0|skip_connect~1|", "3 node groups"),
    ("|conv~0|+|none~0|skip_connect~1|+|none~0|none~1|none~2|", "unknown operation"),
    ("|none~1|+|none~0|skip_connect~1|+|none~0|none~1|none~2|", "op~0"),
    ("|none~0|+|none~0|+|none~0|none~1|none~2|", "2 incoming"),
    ("none~0|+|none~0|none~1|+|none~0|none~1|none~2|", "start and end"),
])
def test_malformed_strings_get_a_message(bad, match):
    with pytest.raises(nb.ArchError, match=match):
        nb.parse(bad)


def test_op_matrix_and_validity_follow_the_official_rules():
    x = nb.op_matrix(EXAMPLE)
    assert x.shape == (8, 7) and np.all(x.sum(1) == 1)
    assert nb.VOCAB[x[0].argmax()] == "input" and nb.VOCAB[x[7].argmax()] == "output"
    assert nb.from_op_matrix(x) == EXAMPLE
    assert nb.adjacency().sum() == 10 and nb.adjacency()[0, 1] == 1 and nb.adjacency()[6, 7] == 1
    bad = x.copy()
    bad[3] = 0
    bad[3, nb.VOCAB.index("input")] = 1  # an intermediate node may not be the input
    assert not nb.is_valid(bad) and nb.from_op_matrix(bad) is None
    two = x.copy()
    two[2, 3] = 1  # two operations on one node
    assert not nb.is_valid(two)


def test_functionally_equal_cells_share_a_class():
    same = ["|nor_conv_3x3~0|+|none~0|none~1|+|none~0|nor_conv_1x1~1|none~2|",  # node 2 is dead: no path to 3
            "|nor_conv_3x3~0|+|avg_pool_3x3~0|none~1|+|none~0|nor_conv_1x1~1|none~2|"]
    assert nb.canonical(same[0]) == nb.canonical(same[1])
    assert nb.canonical("|skip_connect~0|+|none~0|none~1|+|none~0|skip_connect~1|none~2|") == "x"
    assert nb.canonical("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|") == "zero"
    assert nb.canonical(EXAMPLE) != nb.canonical(same[0])
    classes = nb.unique_classes()
    assert sum(len(v) for v in classes.values()) == 15625 and len(classes) == 5773


def test_cell_network_runs_and_none_edges_carry_no_weights():
    from studio.nets.nas_cell import CellNet, count_params, flops

    full = CellNet("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|")
    empty = CellNet("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    assert full(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert count_params(full) > count_params(empty)
    assert flops(full.arch) > flops(EXAMPLE) > flops(empty.arch)


def test_ground_truth_rows_are_resumable(tmp_path, monkeypatch):
    from studio.train import nasbench as run_nb

    monkeypatch.setitem(run_nb.RECIPE, "epochs", 1)
    path = tmp_path / "table.csv"
    run_nb.run(path, group=2, limit=2, progress=False)
    rows = list(csv.DictReader(path.open()))
    assert [(r["arch"], r["task"]) for r in rows] == [(a, t) for t in run_nb.TASKS for a in run_nb.visit_order()[:2]]
    assert all(0 <= float(r["test_acc"]) <= 1 and r["seed"] == "0" for r in rows)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")  # a run stopped before the last row
    run_nb.run(path, group=2, limit=2, progress=False)
    again = list(csv.DictReader(path.open()))
    assert [(r["arch"], r["task"]) for r in again] == [(r["arch"], r["task"]) for r in rows]  # only the missing row
    x, y = nb.task_data("even/odd", "test")
    assert x.shape[1:] == (1, 8, 8) and set(y.tolist()) == {0, 1}
    assert len(nb.task_data("0-4", "val")[0]) + len(nb.task_data("5-9", "val")[0]) == 360


def _copy_into(many, g, net):
    """Put a CellNet's weights into slot g of a CellNets (with non-trivial BatchNorm affines)."""
    c = many.c
    s = slice(g * c, (g + 1) * c)
    many.stem.weight[s] = net.stem[0].weight
    for mine, theirs in ((many.stem_bn, net.stem[1]), (many.head_bn, net.head[0])):
        theirs.weight.add_(torch.rand(c))
        theirs.bias.add_(torch.randn(c))
        mine.weight[s], mine.bias[s] = theirs.weight, theirs.bias
    for cell in (1, 2):
        for key, mod in getattr(net, f"cell{cell}").edges.items():
            if isinstance(mod, torch.nn.Sequential):
                e = nb.EDGES.index(tuple(int(v) for v in key.split("_")))
                name = f"nor_conv_{mod[1].kernel_size[0]}x{mod[1].kernel_size[0]}"
                many.convs[f"{cell}_{e}_{name}"][1].weight[s] = mod[1].weight
    many.head_w[g], many.head_b[g] = net.head[4].weight.T, net.head[4].bias


@torch.no_grad()
def test_batched_cells_compute_each_cell_network():
    from studio.nets.nas_cell import CellNet, CellNets, GroupedConv

    archs = [EXAMPLE, "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|",
             "|nor_conv_3x3~0|+|skip_connect~0|avg_pool_3x3~1|+|nor_conv_1x1~0|none~1|nor_conv_3x3~2|"]
    nets = [CellNet(a, n_classes=5, c=8) for a in archs]
    many = CellNets(archs, n_classes=5, c=8)
    for g, net in enumerate(nets):
        _copy_into(many, g, net)
    x = torch.randn(6, 1, 8, 8)
    for matmul in (False, True):  # grouped convolutions, or unfold + batched matmul (the GPU path)
        for m in many.modules():
            if isinstance(m, GroupedConv):
                m.matmul = matmul
        for train in (True, False):
            many.train(train)
            ref = torch.stack([net.train(train)(x) for net in nets], 1)
            torch.testing.assert_close(many(x[:, None].expand(6, 3, 1, 8, 8)), ref, atol=1e-5, rtol=1e-5)


def test_the_matmul_path_has_the_convolutions_gradients():
    from studio.nets.nas_cell import CellNets

    archs = [EXAMPLE, nb.all_archs()[777], nb.all_archs()[9000]]
    x = torch.randn(5, 3, 1, 8, 8)
    grads = []
    for matmul in (False, True):
        many = CellNets(archs, n_classes=4, c=8, seed=3, matmul=matmul)
        many(x).square().sum().backward()
        grads.append([p.grad for p in many.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_training_stops_between_steps_and_still_measures_the_cells(monkeypatch):
    from studio.core.sampling import Progress
    from studio.train import nasbench as run_nb

    monkeypatch.setitem(run_nb.RECIPE, "epochs", 1)
    steps = []
    items = run_nb.train_group([EXAMPLE], "0-4", stop=lambda: len(steps) >= 3)
    for item in items:
        if not isinstance(item, Progress):
            break
        steps.append(item)
    batches = -(-len(nb.task_data("0-4", "train")[0]) // run_nb.RECIPE["batch"])
    assert [s.step for s in steps] == [1, 2, 3] and steps[0].total == batches and steps[0].info["epochs"] == 1
    assert item[0]["arch"] == EXAMPLE and 0 <= item[0]["val_acc"] <= 1
    assert next(items, None) is None  # nothing after the rows


def test_a_cell_trains_the_same_alone_or_in_a_group(monkeypatch):
    from studio.train import nasbench as run_nb

    monkeypatch.setitem(run_nb.RECIPE, "epochs", 1)
    group = run_nb.train_many([EXAMPLE, nb.all_archs()[1234]], "0-4")
    alone = run_nb.train_many([EXAMPLE], "0-4")[0]
    assert alone == group[0]
    assert alone["params"] == 2 * (9 * 64 + 8 + 8 + 64 + 8 + 8) + (72 + 16) + (16 + 8 * 5 + 5)  # cells, stem, head


def test_real_nas_bench_201_figures_convert_through_the_strings(tmp_path):
    """The NATS-Bench adapter on a stand-in API (the real files are not shipped): every cell keeps its
    own row, percentages become fractions, and cells are matched by string."""

    class FakeAPI:
        archs = list(reversed(nb.all_archs()))  # another order than the studio's

        def __len__(self):
            return len(self.archs)

        def arch(self, i):
            return self.archs[i]

        def get_more_info(self, i, dataset, hp, is_random):
            assert hp == "200" and is_random is False
            return {"valid-accuracy": 50.0 + i % 50, "test-accuracy": 40.0 + i % 50}

        def get_cost_info(self, i, dataset):
            return {"params": 0.5, "flops": 12.5}

    path = nb.from_nats(FakeAPI(), datasets=("cifar10-valid",), target=tmp_path / "real.csv.gz")
    t = nb.table(str(path))["cifar10-valid"]
    assert len(t) == 15625
    i = FakeAPI.archs.index(EXAMPLE)
    assert t[EXAMPLE]["val_acc"] == pytest.approx((50 + i % 50) / 100) and t[EXAMPLE]["params"] == 500000
    same = nb.unique_classes()[nb.canonical(EXAMPLE)]
    other = next(a for a in same if a != EXAMPLE) if len(same) > 1 else EXAMPLE
    assert t[other]["trained"] == other  # its own row, not its class's


def test_the_shipped_table_covers_every_cell_on_every_task_with_two_seeds():
    t = nb.table()
    assert set(t) == set(nb.TASKS) and all(len(cells) == 15625 for cells in t.values())
    assert all(e["seeds"] == 2 and 0 <= e["val_acc"] <= 1 for cells in t.values() for e in cells.values())
    arch = nb.all_archs()[4321]
    trained = t["5-9"][arch]["trained"]
    rows = [r for r in nb.read_rows() if r["task"] == "5-9" and r["arch"] == trained]
    assert sorted(int(r["seed"]) for r in rows) == [0, 1]
    assert t["5-9"][arch]["val_acc"] == pytest.approx(sum(float(r["val_acc"]) for r in rows) / 2)


def test_the_table_measures_test_accuracy_apart_from_validation():
    """Validation digits (what searches select by) and test digits (read only for a picked cell) are
    separate splits, and the table holds both accuracies, measured, not copied."""
    sizes = {split: len(nb.task_data("all ten", split)[1]) for split in ("train", "val", "test")}
    assert sizes == {"train": 1077, "val": 360, "test": 360}
    t = nb.table()["all ten"]
    differ = sum(abs(e["val_acc"] - e["test_acc"]) > 1e-9 for e in t.values())
    assert differ > 0.5 * len(t)
