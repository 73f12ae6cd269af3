"""The Forecast tab through its API (gradio_client), on tiny random TSDiff models: forecasts with
scores and a downloadable CSV, the upload -> train -> forecast path, and bad CSVs that change
nothing else."""

from __future__ import annotations

import json

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from components.forecast_tab import metrics_rows, summary
from studio.core import baselines as B
from studio.data import series as S
from studio.methods import forecast as F
from tests.conftest import wait_for_job
from tests.test_forecast import _csv, _monthly, tiny_forecast_manager

FAST = {"samples": 8, "sampler": "ddim", "ddim_steps": 3}


@pytest.fixture
def tiny_manager(tiny_manager):
    return tiny_forecast_manager(tiny_manager)


def run_forecast(client, **kw):
    plot, table, info, download, seed, parameters = client.predict(**kw, api_name="/forecast")
    return {"plot": plot, "table": table, "info": info, "download": download, "seed": seed, "parameters": parameters}


def test_forecast_returns_a_fan_chart_scores_against_the_baselines_and_a_csv(app_client):
    client, manager = app_client
    out = run_forecast(client, series="unemployment", seed=4, **FAST)
    assert out["plot"] is not None and out["seed"] == 4
    methods = [row[0] for row in out["table"]["data"]]
    assert methods[0] == "TSDiff-Q" and set(B.BASELINES) <= set(methods)
    assert all(row[1] is not None and row[1] >= 0 for row in out["table"]["data"])
    text = open(out["download"]).read()
    header = json.loads(text.splitlines()[0][2:])
    assert (header["method"], header["series"], header["seed"], header["model"]) == ("forecast", "unemployment", 4,
                                                                                    "tsdiff-unemployment")
    assert text.splitlines()[1].startswith("timestamp,method,q0.1")
    assert "lowest CRPS" in out["info"]
    assert all(row["in use"] == 0 for row in manager.status())


def test_refine_and_synthesize_modes(app_client):
    client, _ = app_client
    out = run_forecast(client, series="unemployment", mode="refine", refiner="ml", iterations=3, baselines=False, **FAST)
    assert [row[0] for row in out["table"]["data"]] == ["SeasonalNaive + ML refinement", "SeasonalNaive"]
    out = run_forecast(client, series="unemployment", mode="synthesize", **FAST)
    assert "Linear Predictive Score" in out["info"]


def test_upload_train_and_forecast_my_series(app_client, tmp_path, monkeypatch):
    from studio.train import forecast as trainer

    monkeypatch.setattr(trainer, "UPLOAD_STEPS", 20)
    monkeypatch.setattr(trainer, "ARCH", {**trainer.ARCH, "hidden": 8, "blocks": 1, "d_state": 4})
    client, manager = app_client
    path = tmp_path / "mine.csv"
    path.write_bytes(_csv(_monthly(150)))
    info, series_choice = client.predict(handle_file(str(path)), api_name="/forecast_upload")
    assert "150 points" in info and "Train on my series" in info and series_choice == "upload"
    with pytest.raises(AppError, match="Train on my series"):
        run_forecast(client, series="upload", **FAST)
    info = client.predict(0, 0, api_name="/forecast_train")
    assert "Training started" in info
    job = wait_for_job(client, "/forecast_job")
    assert job["status"] == "done" and job["yours"] and "final loss" in job["note"] and job["step"] == 20
    assert any(k.startswith("tsdiff-upload-") for k in manager.keys())
    out = run_forecast(client, series="upload", **FAST)
    assert out["parameters"]["model"].startswith("tsdiff-upload-") and out["table"]["data"][0][1] is not None


@pytest.mark.parametrize("content,message", [
    (b"date,value\n2020-01-01,1\n2020-02-01,abc\n", "row 3: 'abc'"),
    (b"when,value\nyesterday,1\n", "not a date"),
    (b"just one column\n1\n2\n", "two columns"),
])
def test_bad_csvs_are_clear_errors_and_the_server_keeps_serving(app_client, tmp_path, content, message):
    client, _ = app_client
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(path)), api_name="/forecast_upload")
    assert run_forecast(client, series="sunspots", baselines=False, **FAST)["plot"] is not None


def test_summary_and_rows_render_for_every_mode():
    manager = tiny_forecast_manager()
    for mode in ("forecast", "refine", "synthesize"):
        *_, r = F.run(F.Params(series="sunspots", mode=mode, baselines=False, **FAST), manager)
        assert summary(r) and isinstance(metrics_rows(r), list)
    s = S.parse_csv(_csv(_monthly(150)))
    assert s.freq == "M"
