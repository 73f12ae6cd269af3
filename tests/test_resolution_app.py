"""The Resolution tab through its API (gradio_client) on a tiny random DDMI (tests/test_resolution.py): a known
scene comes back as one row of tiles per render and one column per size, with the measurements and full-size
PNGs carrying the parameters; bad input gets a message and the server keeps serving."""

from __future__ import annotations

import pytest
from gradio_client.exceptions import AppError
from PIL import Image

from studio.core.results import read_png_parameters
from tests.test_resolution import with_tiny_inr

FAST = {"model": "ddmi-shapes", "source": "scene", "prompt": "a red circle at the top left", "seed": 3,
        "max_size": 64, "zoom": "off", "guidance": 2.0, "steps": 2}


@pytest.fixture
def app_manager(tiny_manager):
    return with_tiny_inr(tiny_manager)


def test_a_scene_comes_back_at_every_size_beside_bicubic_and_the_truth(app_client):
    app, _ = app_client
    info, _preview, gallery, table, files, params = app.predict(**FAST, api_name="/resolution")
    assert "Scene:" in info and "true render" in info
    tiles = gallery["value"]
    assert len(tiles) == 4 * 2 and gallery["columns"] == 2  # four rows (DDMI, two bicubics, truth) by two sizes
    assert all(Image.open(item["image"]).size == (256, 256) for item in tiles)
    assert tiles[-1]["caption"] == "true render, 64 px" and "PSNR" in tiles[0]["caption"]
    assert [row[:2] for row in table["data"]][:2] == [["DDMI", 32], ["DDMI", 64]]
    assert table["headers"][2] == "PSNR (dB)" and isinstance(table["data"][1][2], float)
    sizes = sorted({read_png_parameters(f)["size"] for f in files})
    assert sizes == [32, 64] and len(files) == 8 and params["method"] == "resolution" and params["seed"] == 3
    assert Image.open(next(f for f in files if "ddmi-64px" in f)).size == (64, 64)


def test_generate_and_bad_input(app_client):
    app, _ = app_client
    out = app.predict(**{**FAST, "source": "generate"}, api_name="/resolution")
    assert "Generated" in out[0] and len(out[2]["value"]) == 2 * 2
    for kw, match in (({"source": "generate", "prompt": " "}, "prompt is empty"), ({"steps": 0}, "Steps"),
                      ({"model": "../etc"}, "unknown DDMI model"), ({"max_size": 512}, "Largest render")):
        with pytest.raises(AppError, match=match):
            app.predict(**{**FAST, **kw}, api_name="/resolution")
    assert "Scene:" in app.predict(**FAST, api_name="/resolution")[0]
