"""The Gradio app through its API, as a user script would drive it (gradio_client), on tiny models.

Each test launches the app in-process on a free port, built on the ``tiny_manager`` fixture
(random-init models: noise images, but every path of the app is exercised).
"""

from __future__ import annotations

import time

import gradio as gr
import numpy as np
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

from components import launch
from studio.core.results import read_png_parameters
from studio.methods.generate import Params
from tests.conftest import free_port

FAST = {"steps": 2, "n_images": 2, "preview_every": 1}


def generate(client: Client, **kw):
    preview, gallery, seed, parameters, info = client.predict(**kw, api_name="/generate")
    return {"preview": preview, "gallery": gallery, "seed": seed, "parameters": parameters, "info": info}


def pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_generate_returns_pngs_that_carry_their_parameters(app_client):
    client, _ = app_client
    out = generate(client, model="shapes-t2i", prompt="a blue square at the bottom right", seed=7, **FAST)
    assert out["seed"] == 7 and out["parameters"]["seed"] == 7
    assert out["preview"] is not None
    files = [item["image"] for item in out["gallery"]]
    assert len(files) == 2
    for i, path in enumerate(files):  # the file the server serves, downloaded as a user would
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        p = read_png_parameters(path)
        assert (p["model"], p["prompt"], p["steps"], p["seed"]) == ("shapes-t2i", "a blue square at the bottom right", 2, 7)
        assert (p["index"], p["image_seed"]) == (i, 7 + i)
        assert "digit" not in p
        assert pixels(path).shape == (128, 128, 3)


def test_same_seed_same_pixels_and_random_seed_is_reported(app_client):
    client, _ = app_client
    a = generate(client, model="digits-cond", digit=5, seed=123, **FAST)
    b = generate(client, model="digits-cond", digit=5, seed=123, **FAST)
    for x, y in zip(a["gallery"], b["gallery"]):
        np.testing.assert_array_equal(pixels(x["image"]), pixels(y["image"]))
    assert read_png_parameters(a["gallery"][0]["image"])["digit"] == 5

    r = generate(client, model="digits-cond", digit=5, seed=123, randomize_seed=True, **FAST)
    assert r["seed"] != 123 and r["parameters"]["seed"] == r["seed"]
    assert r["parameters"]["randomize_seed"] is False  # the stored parameters remake the image as is
    assert read_png_parameters(r["gallery"][1]["image"])["image_seed"] == r["seed"] + 1
    again = generate(client, model="digits-cond", digit=5, seed=r["seed"], **FAST)
    np.testing.assert_array_equal(pixels(r["gallery"][0]["image"]), pixels(again["gallery"][0]["image"]))


BAD_INPUTS = [  # (what the caller sends, what the error must say)
    ({"model": "shapes-t2i", "prompt": "   "}, "the prompt is empty"),
    ({"model": "shapes-t2i", "prompt": "x" * 5000}, "5000 characters long; the limit is 200"),
    ({"steps": 0}, "Steps must be between 1 and 200, got 0"),
    ({"steps": 1000}, "Steps must be between 1 and 200, got 1000"),
    ({"n_images": 99}, "Images must be between 1 and 16, got 99"),
    ({"steps": 2.5}, "Steps must be a whole number"),
    ({"scheduler": "nope"}, "Scheduler must be one of ddpm, ddim"),
    ({"model": "nope"}, "unknown model 'nope'; choose one of digits-cond, shapes-t2i"),
]


def test_bad_input_is_a_clear_error_and_the_server_keeps_serving(app_client):
    client, manager = app_client
    for bad, message in BAD_INPUTS:
        with pytest.raises(AppError) as err:
            generate(client, **{"model": "digits-cond", **FAST, **bad})
        assert message in str(err.value), (bad, str(err.value))
    assert all(row["in use"] == 0 for row in manager.status())
    assert len(generate(client, model="digits-cond", **FAST)["gallery"]) == 2


def test_models_panel_status_and_evict(app_client):
    client, _ = app_client
    table = client.predict(api_name="/models_status")
    assert table["headers"][:2] == ["model", "where"]
    assert {row[0] for row in table["data"]} == {"digits-cond", "shapes-t2i", "text-encoder"}
    generate(client, model="digits-cond", **FAST)
    where = {row[0]: row[1] for row in client.predict(api_name="/models_status")["data"]}
    assert where["digits-cond"] == "cpu" and where["shapes-t2i"] == "not loaded"

    message, table = client.predict(model="digits-cond", api_name="/evict")
    assert "digits-cond" in message
    assert {row[0]: row[1] for row in table["data"]}["digits-cond"] == "not loaded"
    generate(client, model="digits-cond", **FAST)
    message, table = client.predict(api_name="/evict_all")
    assert "digits-cond" in message and all(row[1] == "not loaded" for row in table["data"])
    with pytest.raises(AppError, match="nope"):
        client.predict(model="nope", api_name="/evict")


def test_models_panel_times_precision_and_refuses_a_non_diffusion_model(app_client):
    client, manager = app_client
    table = client.predict(model="digits-cond", api_name="/time_precision")
    row = dict(zip(table["headers"], table["data"][-1]))
    assert row["model"] == "digits-cond" and row["reduced"] == "bf16" and row["rule picks"] == "fp32"
    assert row["fp32 ms"] > 0 and row["reduced ms"] > 0
    with pytest.raises(AppError, match="text-encoder"):  # not among the choices (the handler checks it too)
        client.predict(model="text-encoder", api_name="/time_precision")
    assert all(r["in use"] == 0 for r in manager.status())


def test_cancel_stops_between_steps_and_releases_the_model(app_client):
    client, manager = app_client
    job = client.submit(model="shapes-t2i", steps=200, n_images=16, preview_every=1, api_name="/generate")
    deadline = time.time() + 30
    while not any(row["in use"] for row in manager.status()):
        assert time.time() < deadline, "the run never started"
        time.sleep(0.05)
    job.cancel()
    deadline = time.time() + 15
    while any(row["in use"] for row in manager.status()):
        assert time.time() < deadline, "the cancelled run still holds its model"
        time.sleep(0.05)
    assert job.status().code.name == "CANCELLED"
    assert len(generate(client, model="digits-cond", **FAST)["gallery"]) == 2


def test_inputs_are_built_from_params_by_name():
    from components.widgets import param_inputs
    from studio.core.sampling import SCHEDULER_LABELS

    with gr.Blocks():
        inputs = param_inputs(Params, choices={"model": ["digits-cond"]}, labels={"scheduler": SCHEDULER_LABELS})
    assert list(inputs) == [f for f in Params.__dataclass_fields__]
    assert isinstance(inputs["scheduler"], gr.Dropdown) and ("DDIM (deterministic)", "ddim") in inputs["scheduler"].choices
    assert isinstance(inputs["model"], gr.Dropdown) and inputs["model"].value == "digits-cond"
    assert isinstance(inputs["steps"], gr.Slider) and (inputs["steps"].minimum, inputs["steps"].maximum) == (1, 200)
    assert isinstance(inputs["seed"], gr.Number)  # 2**32 positions: a box, not a slider
    assert isinstance(inputs["prompt"], gr.Textbox) and inputs["prompt"].max_length == 200
    assert isinstance(inputs["randomize_seed"], gr.Checkbox)
    assert in_accordion(inputs["preview_every"]) and not in_accordion(inputs["steps"])


def in_accordion(block) -> bool:
    while block is not None and not isinstance(block, gr.Accordion):
        block = block.parent
    return block is not None


def test_launch_is_offline_and_reads_host_and_port(tiny_manager, monkeypatch):
    port = free_port()
    monkeypatch.setenv("GRADIO_SERVER_PORT", str(port))
    monkeypatch.setenv("GRADIO_SERVER_NAME", "127.0.0.1")
    demo = launch(tiny_manager, prevent_thread_lock=True, quiet=True)
    try:
        assert demo.local_url.rstrip("/").endswith(f":{port}")
        assert demo.share is False and demo.ssr_mode is False and demo.max_file_size == 10 * 1024**2
        assert demo.analytics_enabled is False
    finally:
        demo.close()


def test_prompt_or_digit_follow_the_models_conditioning(tiny_manager):
    from components.generate_tab import condition_visibility

    tiny_manager.register("a-folder-model", lambda: None)
    assert condition_visibility(tiny_manager, "digits-cond") == (False, True)
    assert condition_visibility(tiny_manager, "shapes-t2i") == (True, False)
    assert condition_visibility(tiny_manager, "a-folder-model") == (True, True)  # unknown: show both
    assert condition_visibility(tiny_manager, "../../etc") == (True, True)  # only looked up, never a path
    assert all(r["where"] == "not loaded" for r in tiny_manager.status())


def test_a_request_before_the_warm_up_is_done_is_told_so_and_waits_for_it(monkeypatch):
    from components import warm, widgets

    told, order = [], []
    monkeypatch.setattr(warm, "_done", False)
    monkeypatch.setattr(widgets, "ensure_warm", lambda: order.append("warm-up"))
    monkeypatch.setattr(widgets.gr, "Info", lambda message, **_: told.append(message))

    @widgets.shows_errors
    def handler(x):
        order.append("handler")
        return x + 1

    assert handler(1) == 2 and told == [widgets.WARMING_UP] and order == ["warm-up", "handler"]
    monkeypatch.setattr(warm, "_done", True)
    told.clear()
    assert handler(2) == 3 and told == []  # warm: no notice


def test_studio_launch_serves_the_zoo_from_a_fresh_process(tmp_path):
    """`studio launch` as `make studio` runs it: a fresh process on the real zoo, asked to generate
    the moment its page answers (racing the warm-up import of diffusers)."""
    from components.app import start_studio_process, wait_until_up

    proc, url = start_studio_process(free_port())
    try:
        wait_until_up(url, proc)
        client = Client(url, verbose=False, download_files=str(tmp_path))
        out = generate(client, model="digits-cond", digit=3, steps=4, n_images=1, seed=5)
        meta = read_png_parameters(out["gallery"][0]["image"])
        assert (meta["model"], meta["digit"], meta["image_seed"]) == ("digits-cond", 3, 5)
        out = generate(client, model="shapes-t2i", prompt="a red circle", steps=4, n_images=1, seed=5)
        assert read_png_parameters(out["gallery"][0]["image"])["prompt"] == "a red circle"
    finally:
        proc.terminate()
        proc.wait(20)
