"""The Architectures tab through its API (gradio_client) on a random tiny DiffusionNAG pair:
generation returns the table and the figures, training a typed cell reports the comparison, and
malformed strings or out-of-range scales get a message while the server keeps serving."""

from __future__ import annotations

import pytest
from gradio_client.exceptions import AppError

from studio.data import nasbench as nb
from tests.conftest import wait_for_job


@pytest.fixture
def app_manager(nag_manager):
    return nag_manager


@pytest.fixture
def nag_app(app_client):
    return app_client[0]


def test_generate_then_train_a_cell(nag_app, monkeypatch):
    info, dags, table, hist, eff, params, arch = nag_app.predict(
        task="even/odd", scale=10.0, n_cells=8, seed=3, steps=20, api_name="/nag_generate")
    assert "8 cells in" in info and "validity" in info
    assert params["task"] == "even/odd" and params["scale"] == 10.0 and params["steps"] == 20
    if arch:  # a random score network may generate no valid cell; then the table says so
        nb.parse(arch)
        assert table["data"][0][-1] == arch
    again = nag_app.predict(task="even/odd", scale=10.0, n_cells=8, seed=3, steps=20, api_name="/nag_generate")
    assert again[2] == table  # same seed, same cells

    from studio.train import nasbench as run_nb

    monkeypatch.setitem(run_nb.RECIPE, "epochs", 1)
    cell = "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_1x1~1|none~2|"
    started = nag_app.predict(cell, "0-4", api_name="/nag_train")
    assert "running" in started and "your run" in started
    job = wait_for_job(nag_app, "/nag_job")
    assert job["status"] == "done" and job["yours"] and job["step"] == job["total"] > 0
    assert "validation accuracy" in job["note"] and "0-4" in job["note"]


@pytest.mark.parametrize("kw, match", [({"scale": -5.0}, "Guidance scale"), ({"scale": 1e6}, "Guidance scale"),
                                       ({"n_cells": 0}, "Cells"), ({"task": "cifar"}, "Task")])
def test_bad_generation_input_gets_a_message(nag_app, kw, match):
    args = {"task": "all ten", "scale": 10.0, "n_cells": 4, "seed": 0, "steps": 10, **kw}
    with pytest.raises(AppError, match=match):
        nag_app.predict(**args, api_name="/nag_generate")


@pytest.mark.parametrize("arch, match", [("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown operation"),
                                         ("", "empty"), ("x" * 500, "at most"),
                                         ("|none~0|+|none~0|+|none~0|none~1|none~2|", "2 incoming")])
def test_malformed_arch_strings_get_a_message_and_the_server_keeps_serving(nag_app, arch, match):
    with pytest.raises(AppError, match=match):
        nag_app.predict(arch, "all ten", api_name="/nag_train")
    info = nag_app.predict(task="all ten", scale=0.0, n_cells=2, seed=0, steps=10, api_name="/nag_generate")[0]
    assert "2 cells in" in info
