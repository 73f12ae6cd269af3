"""The Compose tab through its API (gradio_client) on tiny models, and its pure helpers."""

from __future__ import annotations

import pytest
from gradio_client.exceptions import AppError

from components.compose_tab import rows_to_syntax, verdict_table
from studio.core.results import read_png_parameters
from studio.methods.compose import ComposeResult, Concept

FAST = {"steps": 2, "n_images": 2, "preview_every": 1}


def compose(client, **kw):
    preview, gallery, verdicts, seed, parameters, info = client.predict(**kw, api_name="/compose")
    return {"gallery": gallery, "verdicts": verdicts, "seed": seed, "parameters": parameters, "info": info}


def test_compose_returns_pngs_with_every_concept_and_weight(app_client):
    client, manager = app_client
    out = compose(client, prompt="a red circle | a blue square | a green shape", weights="2 | 2 | -1.5", seed=9, **FAST)
    assert len(out["gallery"]) == 2 and out["seed"] == 9
    meta = read_png_parameters(out["gallery"][1]["image"])
    assert [c["op"] for c in meta["concepts"]] == ["AND", "AND", "NOT"] and meta["image_seed"] == 10
    assert "3 concept(s) (4 predictions per step, batched)" in out["info"]
    assert "No judge" in out["verdicts"]  # tiny random models have no shapes judge
    assert all(row["in use"] == 0 for row in manager.status())


@pytest.mark.parametrize("bad,message", [
    ({"prompt": ""}, "no concepts"),
    ({"prompt": " | ".join("abcdefghi")}, "the limit is 8"),
    ({"weights": "2 | 99"}, "between -20 and 20"),
    ({"prompt": "a | " + "x" * 300}, "characters"),
    ({"model": "digits-cond"}, "not a text-to-image model"),
])
def test_bad_compositions_are_clear_errors_and_the_server_keeps_serving(app_client, bad, message):
    client, manager = app_client
    with pytest.raises(AppError) as err:
        compose(client, **{"prompt": "a | b", **FAST, **bad})
    assert message in str(err.value)
    assert all(row["in use"] == 0 for row in manager.status())
    assert len(compose(client, prompt="a red circle", **FAST)["gallery"]) == 2


def test_rows_become_the_official_syntax():
    texts = ["a red circle", "", "a blue shape", "ignored"]
    assert rows_to_syntax(texts, [2, 5, 1.5, 3], ["AND", "AND", "NOT", "AND"], 3) == (
        "a red circle | a blue shape", "2 | -1.5")


def test_verdict_table_names_the_failed_concept():
    result = ComposeResult(images=[], parameters={}, seeds=[4, 5],
                           concepts=[Concept("a red circle", 2.0), Concept("a blue shape", -2.0)],
                           verdicts=[[True, False], [True, True]])
    table = verdict_table(result)
    assert "| seed 4 | ✓ | ✗ | ✗ |" in table and "| seed 5 | ✓ | ✓ | ✓ |" in table
    assert "| **satisfied** | 2/2 | 1/2 | 1/2 |" in table and "NOT a blue shape (-2)" in table
