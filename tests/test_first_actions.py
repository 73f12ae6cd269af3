"""The first action after start: a freshly started studio (a new process, the real zoo) gets every
tab's first action at once, the moment its page answers, before any warm-up could finish.

Deferred imports of diffusers raced the first requests (``cannot import name 'ConfigMixin' from
partially initialized module 'diffusers.configuration_utils'``, from Forecast's *Train on my series*
and Architectures' *Generate cells*); every handler now waits for the one warm-up under the lock.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from gradio_client import Client, handle_file

from components.app import start_studio_process, wait_until_up
from tests.conftest import free_port

pytestmark = pytest.mark.slow


def first_actions(url: str, tmp_path) -> dict:
    """{tab: zero-argument call of its first action through the API, each in its own session}."""
    def client() -> Client:
        return Client(url, verbose=False, download_files=str(tmp_path))

    csv = tmp_path / "series.csv"
    csv.write_text("month,value\n" + "".join(f"{2000 + m // 12}-{m % 12 + 1:02d},{100 + (m % 12) * 3 + m}\n" for m in range(150)))

    def job_runs(c: Client, job: str, stop: str) -> dict:
        """Poll a background job until it has taken a step (or ended), then stop it; its state."""
        end = time.time() + 300
        while time.time() < end:
            state = c.predict(api_name=job)
            if state["status"] != "running" or state["step"] >= 1:
                break
            time.sleep(0.2)
        if state["status"] == "running":
            c.predict(api_name=stop)
        assert state["status"] != "failed", state["message"]
        return state

    def forecast_train():
        c = client()
        c.predict(handle_file(str(csv)), api_name="/forecast_upload")
        c.predict(0, 0, api_name="/forecast_train")
        return job_runs(c, "/forecast_job", "/forecast_stop")

    def tune_train():
        c = client()
        c.predict(style="thick", steps=1, lora_rank=2, n_refs=1, api_name="/pso_train")
        return job_runs(c, "/pso_job", "/pso_stop")

    def nag_train():
        c = client()
        c.predict(NAG_CELL, "all ten", api_name="/nag_train")
        return job_runs(c, "/nag_job", "/nag_stop")

    def subject_train():
        c = client()
        c.predict(comparison="arbooth", iterations=1, n_images=2, api_name="/subject_train")
        return job_runs(c, "/subject_job", "/subject_stop")

    return {
        "generate": lambda: client().predict(model="digits-cond", digit=3, steps=2, n_images=1, api_name="/generate"),
        "compose": lambda: client().predict(steps=2, n_images=1, api_name="/compose"),
        "guide": lambda: client().predict(steps=2, n_images=1, api_name="/guide"),
        "forecast": lambda: client().predict(**FORECAST, api_name="/forecast"),
        "forecast train": forecast_train,
        "edit": lambda: client().predict(k=1, n_images=1, api_name="/sign_generate"),
        "tune": tune_train,
        "architectures": lambda: client().predict(**NAG_GENERATE, api_name="/nag_generate"),
        "architectures train": nag_train,
        "subject train": subject_train,
        "resolution": lambda: client().predict(max_size=64, api_name="/resolution"),
        "swap": lambda: client().predict(steps=2, compare="ldfacenet", api_name="/swap"),
    }


FORECAST = {"series": "co2", "samples": 4, "sampler": "ddim", "ddim_steps": 2, "baselines": False}
NAG_GENERATE = {"n_cells": 2, "steps": 10}
NAG_CELL = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def test_every_tabs_first_action_right_after_start_meets_no_half_imported_module(tmp_path):
    proc, url = start_studio_process(free_port())
    try:
        wait_until_up(url, proc)
        t0 = time.perf_counter()
        actions = first_actions(url, tmp_path)
        with ThreadPoolExecutor(len(actions)) as pool:
            futures = {name: pool.submit(call) for name, call in actions.items()}
        errors = {name: repr(f.exception()) for name, f in futures.items() if f.exception() is not None}
        assert not errors, errors
        assert time.perf_counter() - t0 < 600
    finally:
        proc.terminate()
        proc.wait(20)
