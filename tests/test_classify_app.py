"""The Classify tab through its API (gradio_client), on tiny random models: a test digit, a drawing
through Gradio's own file handling, and bad inputs that change nothing else."""

from __future__ import annotations

import pytest
from gradio_client.exceptions import AppError
from PIL import Image

from tests.conftest import sketch_value

FAST = {"n_samples": "2 4", "to_keep": "2 1"}




def test_a_test_digit_gets_a_verdict_a_chart_and_a_csv_with_the_parameters(app_client):
    client, manager = app_client
    picture, info, chart, csv, parameters = client.predict(test_index=7, seed=3, **FAST, api_name="/classify")
    assert Image.open(picture).size == (160, 160)
    assert "**Diffusion classifier:" in info and "24 network evaluations" in info and "Round 2:" in info
    assert parameters["test_index"] == 7 and parameters["candidate_names"] == [str(i) for i in range(10)]
    text = open(csv).read()
    assert text.startswith('# method: "classify"') and text.count("\n") == len(parameters) + 1 + 24
    assert all(row["in use"] == 0 for row in manager.status())


def test_a_drawing_is_read_through_the_canvas(app_client, tmp_path):
    client, _ = app_client
    client.predict(sketch_value(tmp_path, blank=True), api_name="/classify_read")
    with pytest.raises(AppError, match="draw a digit"):
        client.predict(source="drawing", **FAST, api_name="/classify")
    client.predict(sketch_value(tmp_path), api_name="/classify_read")
    _, info, *_, parameters = client.predict(source="drawing", **FAST, api_name="/classify")
    assert parameters["source"] == "drawing" and "inverted" in info


@pytest.mark.parametrize("values,message", [
    ({"source": "drawing"}, "draw a digit"),
    ({"n_samples": "4 2"}, "must increase"),
    ({"test_index": 400}, "Test digit must be between 0 and 359"),
    ({"model": "nope"}, "unknown model"),
])
def test_bad_input_gets_a_message_and_the_app_keeps_serving(app_client, values, message):
    client, manager = app_client
    with pytest.raises(AppError, match=message):
        client.predict(**{**FAST, **values}, api_name="/classify")
    assert all(row["in use"] == 0 for row in manager.status())
    *_, parameters = client.predict(**FAST, api_name="/classify")
    assert parameters["test_index"] == 0


@pytest.mark.parametrize("tiny_sd_folder", ["epsilon"], indirect=True)
def test_the_dropdown_lists_conditional_models_and_a_loaded_pipeline_folder(tiny_manager, tiny_sd_folder):
    from components.classify_tab import conditional_models

    tiny_manager.add_source(str(tiny_sd_folder), key="tiny-sd")
    tiny_manager.register("uncond", lambda: None, info={"kind": "diffusion", "conditioning": "none"})
    assert conditional_models(tiny_manager) == ["digits-cond", "shapes-t2i", "tiny-sd"]
