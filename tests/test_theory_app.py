"""The Theory tab through its API (gradio_client): the playground draws, the time slider redraws from
the stored particles in the same session, bad input gets the studio's message, and the teleport panel
says why a model without Gaussian statistics cannot teleport."""

from __future__ import annotations

import time

import pytest
from gradio_client.exceptions import AppError


def test_the_playground_draws_and_the_time_slider_redraws_the_stored_run(app_client):
    client, manager = app_client
    t0 = time.perf_counter()
    field, four, info, parameters = client.predict(particles=200, steps=50, time=0.8, api_name="/theory_draw")
    seconds = time.perf_counter() - t0
    assert field is not None and four is not None
    assert "Energy distance" in info and "t = 0.80" in info and parameters["particles"] == 200
    field, four, info, parameters = client.predict(0.0, api_name="/theory_time")
    assert "t = 0.001" in info and parameters["time"] == 0.0 and parameters["particles"] == 200
    print(f"draw round trip {seconds:.2f} s")
    # the benchmarks' figures are drawn when their accordion opens (results committed in benchmarks/results)
    bench, digits_curve, shapes_curve = client.predict(api_name="/theory_measured")
    assert bench is not None and digits_curve is not None and shapes_curve is not None


def test_bad_input_gets_a_message_and_the_tab_keeps_serving(app_client):
    client, manager = app_client
    for values, message in [({"steps": 0}, "Steps"), ({"time": 3}, "Time t"), ({"distribution": "cat"}, "Distribution")]:
        with pytest.raises(AppError, match=message):
            client.predict(**values, api_name="/theory_draw")
    *_, parameters = client.predict(particles=20, steps=5, api_name="/theory_draw")
    assert parameters["steps"] == 5
    # the teleport panel: a model without Gaussian statistics is refused with the reason
    with pytest.raises(AppError, match="no Gaussian statistics"):
        client.predict(model="digits-cond", steps=4, teleport=2, n_images=1, api_name="/theory_teleport")
    assert all(row["in use"] == 0 for row in manager.status())
