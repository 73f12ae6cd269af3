"""Theory playground benchmark (issue 22): how long one interaction takes, and whether the samplers reach
the exact distribution.

Per distribution and process, at the tab's defaults (500 particles, 100 steps, seed 0): the seconds of
``theory.run`` plus the two figures (``plots.playground`` and ``plots.parametrisations``), the seconds of
a time-slider move (``theory.at_time`` plus the figures), and the energy distance of the final
particles to 1,000 exact samples beside that of two exact sample sets (the sampling noise). Then
the round trip through the app's API (``/theory_draw`` and ``/theory_time`` from ``gradio_client``
against a served studio), median of 5 each after one warm-up. Goal (issue 22): under 1 s per
interaction on 2 cores. Nothing is chosen here (no selection set).

Run: ``python benchmarks/bench_theory.py`` writes ``benchmarks/results/theory.{json,md}``.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from studio.train.common import machine_description

ROOT = Path(__file__).resolve().parent
REPEATS = 5


def timed(fn, repeats: int = REPEATS) -> tuple[float, object]:
    fn()  # warm-up (first plotly import, first figure)
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def in_process() -> list[dict]:
    from studio import plots
    from studio.methods import theory

    rows = []
    for dist in ("gaussians", "two moons", "ring", "spiral"):
        for process in theory.PROCESSES:
            p = theory.Params(distribution=dist, process=process)

            def draw(p=p):
                *_, r = theory.run(p)
                plots.playground(r).to_json(), plots.parametrisations(r).to_json()
                return r

            seconds, r = timed(draw)

            def scrub(r=r):
                s = theory.at_time(r, 0.2)
                plots.playground(s).to_json(), plots.parametrisations(s).to_json()

            slider, _ = timed(scrub)
            rows.append({"distribution": dist, "process": process, "draw_s": round(seconds, 3),
                         "slider_s": round(slider, 3), "energy": round(r.energy, 5),
                         "energy_floor": round(r.energy_floor, 5), "mismatch": r.mismatch})
            print(rows[-1], flush=True)
    return rows


def through_the_app() -> dict:
    import socket

    from gradio_client import Client

    from components.app import start_studio_process, wait_until_up

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc, url = start_studio_process(port)
    try:
        wait_until_up(url, proc)
        client = Client(url, verbose=False)
        draw, _ = timed(lambda: client.predict(api_name="/theory_draw"))
        slider, _ = timed(lambda: client.predict(0.2, api_name="/theory_time"))
    finally:
        proc.terminate()
        proc.wait(30)
    return {"draw_s": round(draw, 3), "slider_s": round(slider, 3)}


def markdown(out: dict) -> str:
    lines = ["# Theory playground: seconds per interaction and distance to the exact distribution", "",
             f"Machine: {out['machine']}; {out['date']}. Command: `python benchmarks/bench_theory.py`. "
             "Defaults: 500 particles, 100 steps, seed 0; medians of 5 after a warm-up. Energy distance: final "
             "particles vs 1,000 exact samples, beside two exact sample sets (the sampling noise). No setting is chosen "
             "from these runs, so there is no selection set: every figure is a report at the tab's defaults (seed 0; "
             "the exact samples from seed 1).", "",
             "| distribution | process | draw (run + figures), s | time slider, s | energy distance | exact vs exact | "
             "max velocity mismatch |", "|---|---|---|---|---|---|---|"]
    for r in out["in_process"]:
        lines.append(f"| {r['distribution']} | {r['process']} | {r['draw_s']} | {r['slider_s']} | {r['energy']} | "
                     f"{r['energy_floor']} | {r['mismatch']:.1e} |")
    app = out.get("app")
    if app:
        lines += ["", f"Through the app's API (a served studio, `gradio_client`): **draw {app['draw_s']} s, time slider "
                      f"{app['slider_s']} s** (goal: under 1 s)."]
    worst = max(max(r["draw_s"], r["slider_s"]) for r in out["in_process"])
    lines += ["", f"Slowest in-process interaction: {worst} s.", ""]
    return "\n".join(lines)


def main() -> None:
    out = {"machine": machine_description(), "date": time.strftime("%Y-%m-%d"), "in_process": in_process()}
    try:
        out["app"] = through_the_app()
    except Exception as exc:  # the in-process figures stand on their own
        print(f"app round trip not measured: {exc}")
    (ROOT / "results" / "theory.json").write_text(json.dumps(out, indent=1) + "\n")
    (ROOT / "results" / "theory.md").write_text(markdown(out))
    print(markdown(out))


if __name__ == "__main__":
    main()
