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


def test_ground_truth_rows_are_resumable_and_sharded(tmp_path, monkeypatch):
    from studio.train import nasbench as run_nb

    monkeypatch.setitem(run_nb.RECIPE, "epochs", 1)
    path = tmp_path / "table.csv"
    run_nb.run(path, limit=1, progress=False, shard=(1, 2))
    rows = list(csv.DictReader(path.open()))
    assert [r["task"] for r in rows] == list(run_nb.TASKS)
    assert rows[0]["arch"] == run_nb.visit_order()[1]  # shard 1 of 2 starts at the second cell
    assert all(0 <= float(r["test_acc"]) <= 1 for r in rows)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")  # a run stopped before the cell's last task
    run_nb.run(path, limit=1, progress=False, shard=(1, 2))
    again = list(csv.DictReader(path.open()))
    assert [(r["arch"], r["task"]) for r in again] == [(r["arch"], r["task"]) for r in rows]  # only the missing task
    x, y = run_nb.task_data("even/odd", "test")
    assert x.shape[1:] == (1, 8, 8) and set(y.tolist()) == {0, 1}
    assert len(run_nb.task_data("0-4", "val")[0]) + len(run_nb.task_data("5-9", "val")[0]) == 360
