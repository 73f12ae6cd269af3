"""The Debias tab through its API (gradio_client) on tiny random models (those of tests/test_debias.py): one run
shows both grids, the two histograms with their bias scores, the inferred groups and PNGs carrying the
parameters; bad input gets a message and the server keeps serving."""

from __future__ import annotations

import json

import pytest
from gradio_client.exceptions import AppError
from PIL import Image

from studio.core.results import read_png_parameters
from tests.test_debias import with_tiny_debias

FAST = {"model": "invdiff-shapes", "prompt": "a circle", "r": 0.8, "n_images": 2, "seed": 3, "guidance": 2.0,
        "steps": 2, "scheduler": "dpm++"}


@pytest.fixture
def app_manager(tiny_manager):
    return with_tiny_debias(tiny_manager)


def test_a_run_shows_both_models_their_histograms_and_the_groups(app_client):
    app, _ = app_client
    info, biased, debiased, hist, groups, files, params = app.predict(**FAST, api_name="/debias")
    assert "shapes-t2i (r = 0)" in info and "InvDiff, r = 0.8" in info and "seed 3 + *i*" in info
    assert Image.open(biased).size == Image.open(debiased).size
    traces = json.loads(hist["plot"])["data"]
    assert [t["name"].split(" (")[0] for t in traces] == ["biased", "InvDiff"]
    assert all(sum(t["y"]) == 2 for t in traces)  # every image counted: a colour, or "no such shape"
    assert groups["headers"][:2] == ["group", "images"] and groups["data"]
    assert params["prompt"] == "a circle" and params["base"] == "shapes-t2i" and params["method"] == "debias"
    shown = [read_png_parameters(f)["model_shown"] for f in files]
    assert shown == ["biased", "debiased"] and read_png_parameters(files[0])["seed"] == 3


def test_bad_input_gets_a_message_and_the_server_keeps_serving(app_client):
    app, _ = app_client
    for kw, match in (({"prompt": " "}, "prompt is empty"), ({"r": 2.0}, "Mix r"), ({"n_images": 500}, "Images"),
                      ({"model": "../etc"}, "unknown InvDiff module")):
        with pytest.raises(AppError, match=match):
            app.predict(**{**FAST, **kw}, api_name="/debias")
    assert "InvDiff" in app.predict(**FAST, api_name="/debias")[0]
