"""The Swap tab through its API (gradio_client) on tiny random models (tests/test_swap.py): one run shows the
original and each variant with the judge's readings and PNGs carrying the parameters; bad input gets a message
and the server keeps serving."""

from __future__ import annotations

import pytest
from gradio_client.exceptions import AppError

from studio.core.results import read_png_parameters
from tests.test_swap import with_tiny_swap

FAST = {"model": "shapes-t2i", "scene_seed": 1, "object": 1, "new_shape": "square", "new_colour": "blue",
        "compare": "baselines", "seed": 0, "what": 2.0, "where": 2.0, "guidance": 2.0, "steps": 2,
        "sdedit_strength": 0.6}


@pytest.fixture
def app_manager(tiny_manager):
    return with_tiny_swap(tiny_manager)


def test_a_swap_shows_the_original_and_every_variant_with_the_judges_readings(app_client):
    app, _ = app_client
    info, _preview, gallery, table, params = app.predict(**FAST, api_name="/swap")
    assert "becomes 'a blue square" in info
    assert [item["caption"] for item in gallery][0] == "original" and len(gallery) == 5
    variants = [read_png_parameters(item["image"])["variant"] for item in gallery]
    assert variants == ["original", "ldfacenet", "inpaint", "sdedit", "compose"]
    assert table["headers"][:3] == ["variant", "judge reads the cell", "asked in the cell"]
    assert [row[0] for row in table["data"]] == variants and params["asked"].startswith("a blue square")


def test_bad_input_gets_a_message_and_the_server_keeps_serving(app_client):
    app, _ = app_client
    for kw, match in (({"object": 3}, "choose an object"), ({"steps": 0}, "Steps"),
                      ({"model": "../etc"}, "unknown shapes model"), ({"what": 5000.0}, "What weight")):
        with pytest.raises(AppError, match=match):
            app.predict(**{**FAST, **kw}, api_name="/swap")
    assert "becomes" in app.predict(**FAST, api_name="/swap")[0]
