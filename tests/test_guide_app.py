"""The Guide tab through its API (gradio_client), on tiny random models and classifiers."""

from __future__ import annotations

import pytest
from gradio_client.exceptions import AppError

from components.guide_tab import summary, trace_figure
from studio.core.manager import ModelManager
from studio.core.params import ParamError
from studio.core.results import read_png_parameters
from studio.methods import guide

FAST = {"steps": 3, "n_images": 2, "preview_every": 1}


@pytest.fixture
def app_manager(guide_manager):
    return guide_manager


def run_guide(client, **kw):
    preview, gallery, plot, seed, parameters, info = client.predict(**kw, api_name="/guide")
    return {"gallery": gallery, "plot": plot, "seed": seed, "parameters": parameters, "info": info}


@pytest.mark.parametrize("method", guide.METHODS)
def test_every_method_returns_pngs_with_its_parameters_and_a_trace(app_client, method):
    client, manager = app_client
    out = run_guide(client, recipe=method, target=4, scale=3.0, seed=5, sampler="ddim" if method == "ppap" else "ddpm",
                    **FAST)
    assert len(out["gallery"]) == 2 and out["seed"] == 5
    meta = read_png_parameters(out["gallery"][1]["image"])
    assert (meta["method"], meta["target"], meta["scale"], meta["image_seed"]) == ("guide", 4, 3.0, 6)
    assert meta["classifier"] == guide.CLASSIFIER_OF.get(method)
    assert "read as **4**" in out["info"] and out["plot"] is not None
    assert all(row["in use"] == 0 for row in manager.status())


@pytest.mark.parametrize("bad,message", [
    ({"target": 12}, "Target class"),
    ({"scale": -1.0}, "Scale"),
    ({"steps": 1}, "Steps"),
    ({"recipe": "magic"}, "Method"),
    ({"sampler": "euler"}, "Sampler"),
])
def test_bad_inputs_are_clear_errors_and_the_server_keeps_serving(app_client, bad, message):
    client, manager = app_client
    with pytest.raises(AppError) as err:
        run_guide(client, **{**FAST, **bad})
    assert message in str(err.value)
    assert len(run_guide(client, **FAST)["gallery"]) == 2
    assert all(row["in use"] == 0 for row in manager.status())


def test_a_missing_classifier_names_its_recipe():
    m = ModelManager(device="cpu")
    m.register("digits-cond", lambda: None)
    with pytest.raises(ParamError, match="studio train guide-ppap"):
        guide.check(guide.Params(recipe="ppap"), m)
    guide.check(guide.Params(recipe="cfg"), m)  # CFG needs no classifier


def test_trace_and_summary_render():
    trace = guide.Trace(timesteps=[999, 500, 0], classifier=[[0.1, 0.2], [0.5, 0.6], [0.9, 1.0]],
                        judge=[[0.1, 0.1], [0.3, 0.5], [0.8, 0.9]])
    fig = trace_figure(trace, 3, 3)
    names = [t.name for t in fig.data if t.name]
    assert names == ["judge on x0_hat (mean)", "guiding classifier (mean)"]
    assert list(fig.data[2].y) == pytest.approx([0.1, 0.4, 0.85])
    result = guide.GuideResult(images=[], parameters={}, seeds=[1, 2], target=3, predicted=[3, 5], confidence=[0.9, 0.2])
    assert "**1 / 2**" in summary(result, guide.Params(target=3)) and result.caption(1).startswith("seed 2: ✗ judge reads 5")
