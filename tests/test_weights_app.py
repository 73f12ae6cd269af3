"""The Weights tab through its API (gradio_client) on tiny random generators (those of tests/test_weights.py):
generation streams the curve and ends with the histogram, the memorisation table and a downloadable model
that loads into TinyCNN and scores what the table says; your own examples (drawn and uploaded) are
collected per session; bad input gets a message and the server keeps serving."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from studio.data import digit_tasks as D
from studio.methods import weights
from studio.nets.weightgen import TinyCNN
from tests.conftest import sketch_value
from tests.test_weights import TinySSL, tiny_d2nwg, tiny_pdiff

TASK = "rot0-plain-clean"
FAST = {"k": 4, "seed": 0, "finetune_steps": 3, "support_seed": 0, "steps": 3, "scheduler": "ddim", "lr": 0.05}


@pytest.fixture
def app_manager(tiny_manager):
    tiny_manager.register("d2nwg-digits", tiny_d2nwg, info={"kind": "weightgen", "method": "d2nwg"})
    tiny_manager.register("pdiff-digits", tiny_pdiff, info={"kind": "weightgen", "method": "pdiff",
                                                            "tasks": [TASK]})
    tiny_manager.register("simclr-digits", lambda: TinySSL().eval(), info={"kind": "encoder"})
    return tiny_manager


@pytest.fixture
def app(app_client):
    return app_client[0]


def generate(app, **kw):
    return app.predict(**{"model": "d2nwg-digits", "task": TASK, **FAST, **kw}, api_name="/weights_generate")


def test_generate_shows_the_figures_and_the_downloaded_model_scores_what_the_table_says(app):
    from safetensors import safe_open
    from safetensors.torch import load_file

    info, hist, curve, scatter, table, index, path, params = generate(app)
    assert "4 generated models on the test split of rot0-plain-clean" in info and "Nearest seen task" in info
    names = [t["name"] for t in json.loads(hist["plot"])["data"]]
    assert any(n.startswith("generated (4)") for n in names) and any(n.startswith("random") for n in names)
    assert any(n.startswith("the zoo's models of this task (2)") for n in names)  # 2 checkpoints per task
    steps = json.loads(curve["plot"])["data"][0]["customdata"]
    assert steps == [0, 1, 2, 3] and len(json.loads(curve["plot"])["data"]) == 3
    assert len(json.loads(scatter["plot"])["data"][0]["x"]) == 4
    assert table["headers"][:2] == ["model", "accuracy"] and len(table["data"]) == 4
    assert params["task"] == TASK and params["k"] == 4 and params["method"] == "D2NWG"
    assert path.endswith(".safetensors") and f"model-{int(index):03d}" in path

    other = (int(index) + 1) % 4
    path = app.predict(other, api_name="/weights_download")
    net = TinyCNN()
    net.load_state_dict(load_file(path))
    with safe_open(path, "pt") as f:
        assert json.loads(f.metadata()["parameters"])["seed"] == 0 and f.metadata()["model_index"] == str(other)
    test = D.data(TASK, "test")
    with torch.no_grad():
        acc = (net(torch.from_numpy(test.images)).argmax(1).numpy() == test.labels).mean()
    row = next(r for r in table["data"] if str(r[0]).split()[0] == str(other))
    assert acc == pytest.approx(row[1], abs=1e-4)


def digit_png(tmp_path, i: int) -> str:
    """A real test digit (class ``i % 10`` among the first ones) saved as a 64 x 64 PNG."""
    d = D.data(TASK, "test")
    pick = np.flatnonzero(d.labels == 0)[i]
    img = Image.fromarray(((d.images[pick, 0] + 1) * 127.5).astype(np.uint8), "L").resize((64, 64))
    path = tmp_path / f"zero-{i}.png"
    img.save(path)
    return str(path)


def test_my_examples_are_collected_per_session_and_generate_reads_them(app, tmp_path):
    with pytest.raises(AppError, match="give some labelled examples"):
        generate(app, task=weights.OWN)
    with pytest.raises(AppError, match="draw a digit on the canvas or upload"):
        app.predict(sketch_value(tmp_path, blank=True), [], 3, api_name="/weights_add_example")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(AppError, match="notes.png: that file is not an image"):
        app.predict(sketch_value(tmp_path, blank=True), [handle_file(str(text))], 3, api_name="/weights_add_example")
    uploads = [handle_file(digit_png(tmp_path, i)) for i in range(3)]
    state_info = app.predict(sketch_value(tmp_path, blank=True), uploads, 0, api_name="/weights_add_example")[0]
    assert state_info.startswith("3 example(s): 3 x 0") and "second class" in state_info
    with pytest.raises(AppError, match="at least two classes"):
        generate(app, task=weights.OWN)
    state_info, picture = app.predict(sketch_value(tmp_path), [], 1, api_name="/weights_add_example")[:2]
    assert state_info == "4 example(s): 3 x 0, 1 x 1"
    assert Image.open(picture).size == (32 + 3 * 34, 2 * 34)  # a row per digit: three 0s, one 1
    info, hist, curve, *_ = generate(app, task=weights.OWN, finetune_steps=0)
    assert "your 4 examples" in info and curve is None
    app.predict(api_name="/weights_clear_examples")
    with pytest.raises(AppError, match="give some labelled examples"):
        generate(app, task=weights.OWN)


def test_bad_input_gets_a_message_and_the_server_keeps_serving(app):
    with pytest.raises(AppError, match="generate models first"):
        app.predict(0, api_name="/weights_download")
    with pytest.raises(AppError, match="one model per task"):
        generate(app, model="pdiff-digits", task="rot45-thick-clean")
    for kw, match in (({"k": 0}, "Models to generate"), ({"task": "cifar"}, "Task"), ({"lr": 5.0}, "Fine-tuning rate")):
        with pytest.raises(AppError, match=match):
            generate(app, **kw)
    info, *_, params = generate(app, model="pdiff-digits", finetune_steps=0)
    assert params["method"] == "p-diff" and "4 generated models" in info
    with pytest.raises(AppError, match="model index must be 0 to 3"):
        app.predict(4, api_name="/weights_download")
    assert app.predict(3, api_name="/weights_download").endswith("pdiff-model-003.safetensors")


def test_the_task_note_says_which_side_a_task_is_on_and_what_p_diff_lacks(app_manager):
    from components.weights_tab import task_note

    assert "held out: never seen by a generator" in task_note(app_manager, "d2nwg-digits", "rot45-thick-clean")
    assert "seen: in the generators' training data" in task_note(app_manager, "d2nwg-digits", TASK)
    lacking = task_note(app_manager, "pdiff-digits", "rot45-thick-clean")
    assert f"p-diff has models of 1 task(s) only ({TASK})" in lacking
    assert "p-diff" not in task_note(app_manager, "pdiff-digits", TASK)
    assert "Your examples" in task_note(app_manager, "d2nwg-digits", weights.OWN)
