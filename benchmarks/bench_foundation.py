"""Foundation benchmark: loop speed vs diffusers, compute efficiency, app start, memory, one action.

Measured in one run on one machine (named in the output):

1. images/second of the studio loop vs diffusers' stock ``DDIMPipeline`` on the same zoo UNet,
   scheduler, steps, batch and seed (the UNet is bound to one fixed condition, since stock
   unconditional pipelines pass no condition; both sides call the same bound UNet). Goal:
   ratio >= 0.95.
2. achieved GFLOP/s of the denoiser forward (FLOPs counted by ``torch.utils.flop_counter``) vs a
   plain fp32 matmul of similar work on this machine.
3. app cold start to first HTTP 200 against ``python -c "import gradio"`` timed in the same run,
   alternated (goal: at most 1.2x; the floor is the whole process, so it includes the interpreter's
   exit after the import, which the cold start does not); where a start's seconds go, in one process
   (import gradio, the page built, first HTTP 200, the warm-up's imports done); what a visitor who
   clicks Generate at the first HTTP 200 waits; one Generate (goal < 2 s) and one Compose (goal < 3 s)
   at default settings through ``gradio_client`` after a warm-up call that loads the models, and peak
   memory of a process that builds the app and loads every zoo model in turn (goal < 2 GB).
4. ``torch.compile`` (inductor, default mode) of each Generate model's UNet: the seconds its first
   call takes (compiling), its steady forward against eager (batch 8: 4 images with classifier-free
   guidance, medians of alternated pairs), and how many Generates at the model's default steps
   would pay the compile back. The app compiles nothing: it would only where that pays back within
   one run of the app (issue 29), and these figures say whether it does here.

Writes ``benchmarks/results/foundation.json`` and ``.md``; ``--loop`` / ``--compile`` / ``--app`` measure
only that part again, keeping the rest of the last run.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMPipeline
from torch.utils.flop_counter import FlopCounterMode

from studio.core.manager import ModelManager
from studio.core.sampling import make_scheduler, run_to_end, sample
from studio.data.text import encode

ROOT = Path(__file__).resolve().parent
STEPS = 20
REPEATS = 5
LOOP_PAIRS = 15  # the loop-vs-pipeline ratio: a median over this many alternated pairs, with its interval
COLD_PAIRS = 10  # the cold start against ``import gradio``: this many alternated pairs (the machine is noisy)


class Bound(torch.nn.Module):
    """A zoo UNet with its condition fixed, callable as ``unet(x, t)`` like an unconditional UNet."""

    def __init__(self, unet, cond):
        super().__init__()
        self.unet, self.cond = unet, cond
        self.config, self.dtype, self.device = unet.config, unet.dtype, unet.device

    def forward(self, x, t, **_):
        n = x.shape[0]
        return self.unet(x, t, **{k: v[:1].expand(n, *v.shape[1:]) for k, v in self.cond.items()})


def condition(manager: ModelManager, name: str) -> dict:
    if name == "digits-cond":
        return {"class_labels": torch.tensor([3])}
    with manager.use("text-encoder") as enc:
        e = encode(enc, ["a red circle at the top left"])
    return {"encoder_hidden_states": e["encoder_hidden_states"], "encoder_attention_mask": e["encoder_attention_mask"],
            "class_labels": e["pooled"]}


def paired(fn_a, fn_b, repeats=REPEATS) -> tuple[list[float], list[float]]:
    """Seconds of two functions timed alternately (a, b, a, b, ...), ``repeats`` pairs after a warm-up,
    so that drifts of the machine (frequency, neighbours) hit both sides alike."""
    fn_a(), fn_b()  # warm-up (oneDNN primitive creation)
    a, b = [], []
    for _ in range(repeats):
        for fn, out in ((fn_a, a), (fn_b, b)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return a, b


def ratio_interval(a: list[float], b: list[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Median over pairs of b_i / a_i, with a 95% percentile-bootstrap interval of that median."""
    r = np.asarray(b) / np.asarray(a)
    boots = np.median(r[np.random.default_rng(seed).integers(0, len(r), (n_boot, len(r)))], axis=1)
    return float(np.median(r)), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def best_of(fn, repeats=REPEATS) -> float:
    fn()  # warm-up (oneDNN primitive creation)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


@torch.no_grad()
def loop_vs_pipeline(manager: ModelManager) -> list[dict]:
    rows = []
    for name in ("digits-cond", "shapes-t2i"):
        cond = condition(manager, name)
        with manager.use(name) as dm:
            bound = Bound(dm.unet, cond)
            pipe = DDIMPipeline(unet=bound, scheduler=make_scheduler("ddim", dm.scheduler_config))
            pipe.set_progress_bar_config(disable=True)
            for batch in (1, 16):
                shape = (batch, *dm.sample_shape)
                ours = lambda: run_to_end(sample(lambda x, t: bound(x, t).sample, make_scheduler("ddim", dm.scheduler_config),
                                                 shape, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0)))
                stock = lambda: pipe(batch_size=batch, num_inference_steps=STEPS, output_type="np",
                                     generator=torch.Generator().manual_seed(0))
                a, b = paired(ours, stock, LOOP_PAIRS)
                ratio, low, high = ratio_interval(a, b)
                rows.append({"model": name, "batch": batch, "steps": STEPS, "scheduler": "ddim",
                             "studio_img_per_s": round(batch / min(a), 2), "diffusers_img_per_s": round(batch / min(b), 2),
                             "ratio": round(ratio, 3), "ratio_low": round(low, 3), "ratio_high": round(high, 3),
                             "pairs": LOOP_PAIRS})
                print(rows[-1], flush=True)
    return rows


@torch.no_grad()
def compute_efficiency(manager: ModelManager) -> list[dict]:
    rows = []
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    t_mm = best_of(lambda: [a @ b for _ in range(10)]) / 10
    matmul_gflops = 2 * n**3 / t_mm / 1e9
    for name, batch in (("digits-cond", 64), ("shapes-t2i", 16)):
        cond = condition(manager, name)
        with manager.use(name) as dm:
            bound = Bound(dm.unet, cond)
            x, t = torch.randn(batch, *dm.sample_shape), torch.full((batch,), 500)
            with FlopCounterMode(display=False) as counter:
                bound(x, t)
            flops = counter.get_total_flops()
            secs = best_of(lambda: bound(x, t))
        rows.append({"model": name, "batch": batch, "mflop_per_image": round(flops / batch / 1e6, 1),
                     "denoiser_gflops": round(flops / secs / 1e9, 1), "matmul_gflops": round(matmul_gflops, 1),
                     "share_of_matmul": round(flops / secs / 1e9 / matmul_gflops, 3)})
        print(rows[-1], flush=True)
    return rows


def compile_payback(manager: ModelManager, repeats: int = 10) -> list[dict]:
    """Part 4 of the module docstring, for shapes-t2i and digits-cond at their default steps."""
    rows = []
    for name in ("shapes-t2i", "digits-cond"):
        cond = condition(manager, name)
        with manager.use(name) as dm:
            steps = int(dm.info.get("default_steps", STEPS))
            bound = Bound(dm.unet, cond).eval()
            x, t = torch.randn(8, *dm.sample_shape), torch.full((8,), 500)
            compiled = torch.compile(bound)
            with torch.no_grad():
                t0 = time.perf_counter()
                compiled(x, t)
                compile_s = time.perf_counter() - t0
                a, b = paired(lambda: bound(x, t), lambda: compiled(x, t), repeats)
        eager_ms, compiled_ms = float(np.median(a)) * 1e3, float(np.median(b)) * 1e3
        saved_per_generate_s = (eager_ms - compiled_ms) * steps / 1e3
        rows.append({"model": name, "batch": 8, "default_steps": steps, "compile_s": round(compile_s, 1),
                     "eager_ms": round(eager_ms, 2), "compiled_ms": round(compiled_ms, 2),
                     "speedup": round(eager_ms / compiled_ms, 3),
                     "generates_to_pay_back": round(compile_s / saved_per_generate_s) if saved_per_generate_s > 0 else None})
        print(rows[-1], flush=True)
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def import_gradio_s(skip_exit: bool = False) -> float:
    """Seconds of ``python -c "import gradio"`` in a fresh process (the floor that the app's first
    answer is held against). It includes the interpreter's exit after the import (its clean-up of
    gradio's modules); ``skip_exit`` ends the process with ``os._exit(0)`` instead, leaving the import."""
    import subprocess
    import sys

    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    code = "import gradio, os; os._exit(0)" if skip_exit else "import gradio"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return time.perf_counter() - t0


def cold_start_once() -> float:
    """Seconds from starting ``studio launch`` to its first HTTP 200 (the process start included)."""
    from components.app import start_studio_process, wait_until_up

    proc, url = start_studio_process(free_port())
    try:
        return wait_until_up(url, proc)
    finally:
        proc.terminate()
        proc.wait(10)


def cold_start_pairs(pairs: int = COLD_PAIRS) -> dict:
    """``import gradio`` and the studio's cold start, alternated ``pairs`` times (the machine's drift hits
    both alike): best of each, their ratio, and the median of the pairs' ratios with its interval."""
    gradio, bare, cold = [], [], []
    for _ in range(pairs):
        gradio.append(import_gradio_s())
        bare.append(import_gradio_s(skip_exit=True))
        cold.append(cold_start_once())
    mid, lo, hi = ratio_interval(gradio, cold)
    bare_mid, bare_lo, bare_hi = ratio_interval(bare, cold)
    return {"import_gradio_s": round(min(gradio), 2), "cold_start_s": round(min(cold), 2),
            "cold_start_over_import_gradio": round(min(cold) / min(gradio), 2),
            "pair_ratio_median": round(mid, 2), "pair_ratio_low": round(lo, 2),
            "pair_ratio_high": round(hi, 2),
            "import_gradio_no_exit_s": round(min(bare), 2),
            "cold_start_over_import_gradio_no_exit": round(min(cold) / min(bare), 2),
            "no_exit_pair_ratio_median": round(bare_mid, 2), "no_exit_pair_ratio_low": round(bare_lo, 2),
            "no_exit_pair_ratio_high": round(bare_hi, 2), "import_gradio_no_exit_s_all": [round(t, 2) for t in bare],
            "import_gradio_s_all": [round(t, 2) for t in gradio], "cold_start_s_all": [round(t, 2) for t in cold]}


TIMELINE_SCRIPT = """
import json, os, sys, threading, time, urllib.request
t0 = time.perf_counter()
marks = {}
def poll(url):
    while True:
        try:
            if urllib.request.urlopen(url, timeout=1).status == 200:
                marks["first_200"] = time.perf_counter() - t0
                marks["torch_imported_at_first_200"] = "torch" in sys.modules
                return
        except OSError:
            pass
        time.sleep(0.01)
import gradio
marks["import_gradio"] = time.perf_counter() - t0
from components.app import build_app
from studio.core.manager import default_manager
marks["import_studio"] = time.perf_counter() - t0
demo = build_app(default_manager())
marks["build"] = time.perf_counter() - t0
marks["torch_imported_at_build"] = "torch" in sys.modules
port = int(sys.argv[1])
threading.Thread(target=poll, args=(f"http://127.0.0.1:{port}/",), daemon=True).start()
demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, share=False, ssr_mode=False, quiet=True)
marks["launch_returned"] = time.perf_counter() - t0
from components.warm import ensure_warm
ensure_warm()
marks["warm_up_done"] = time.perf_counter() - t0
while "first_200" not in marks:
    time.sleep(0.01)
demo.close()
print(json.dumps(marks))
"""


def start_timeline(runs: int = 3) -> dict:
    """Where a start's seconds go, in one process (``build_app`` + ``launch`` + the warm-up as ``studio
    launch`` runs them, a thread polling the page): the run with the earliest first HTTP 200."""
    import subprocess
    import sys

    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    out = [json.loads(subprocess.run([sys.executable, "-c", TIMELINE_SCRIPT, str(free_port())], env=env, check=True,
                                     capture_output=True, text=True, cwd=ROOT.parent).stdout.splitlines()[-1])
           for _ in range(runs)]
    best = min(out, key=lambda m: m["first_200"])
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in best.items()}


def first_action_after_start() -> dict:
    """A Generate at defaults sent the moment the page first answers: the seconds to its image (the
    warm-up imports, the text encoder and model loads, the sampling), as a visitor who clicks at once waits."""
    from gradio_client import Client

    from components.app import start_studio_process, wait_until_up

    proc, url = start_studio_process(free_port())
    try:
        up = wait_until_up(url, proc)
        t0 = time.perf_counter()
        Client(url, verbose=False).predict(model="shapes-t2i", api_name="/generate")
        return {"first_200_s": round(up, 2), "generate_answered_after_s": round(time.perf_counter() - t0, 2)}
    finally:
        proc.terminate()
        proc.wait(10)


def timed(fn, repeats: int = 3) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


PEAK_SCRIPT = """
import os
from components.app import build_app
from studio.core.manager import ModelManager
m = ModelManager(device="cpu")
m.register_zoo()
build_app(m)
for key in m.keys():
    with m.use(key):
        pass
print(len(m.keys()), m.loaded_bytes)
print(next(l.split()[1] for l in open(f"/proc/{os.getpid()}/status") if l.startswith("VmHWM")))
"""


def peak_with_every_model() -> dict:
    """Peak resident memory of a process that builds the app and loads every zoo model in turn
    (the manager's RAM budget may evict some on the way: what the app itself would hold)."""
    import subprocess
    import sys

    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT], env=env, check=True, capture_output=True, text=True)
    first, peak_kib = out.stdout.splitlines()[:2]
    n, held = first.split()
    return {"models": int(n), "held_at_end_mib": round(int(held) / 2**20, 1), "peak_rss_mib": round(int(peak_kib) / 1024, 1)}


def app_figures() -> dict:
    from components.app import start_studio_process, wait_until_up

    cold = cold_start_pairs()
    timeline = start_timeline()
    first = first_action_after_start()
    proc, url = start_studio_process(free_port())
    try:
        wait_until_up(url, proc)
        from gradio_client import Client

        client = Client(url, verbose=False)
        defaults = {"model": "shapes-t2i"}
        client.predict(**defaults, api_name="/generate")  # loads the text encoder and shapes model
        client.predict(model="digits-cond", api_name="/generate")  # loads the digits model
        generate = timed(lambda: client.predict(**defaults, api_name="/generate"))
        client.predict(api_name="/compose")  # warm-up
        compose = timed(lambda: client.predict(api_name="/compose"))
        peak_kib = int(next(line.split()[1] for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                            if line.startswith("VmHWM")))
    finally:
        proc.terminate()
        proc.wait(10)
    return {**cold, "timeline": timeline, "first_action": first,
            "generate_default_s": round(min(generate), 2), "generate_default_s_all": [round(t, 2) for t in generate],
            "compose_default_s": round(min(compose), 2), "compose_default_s_all": [round(t, 2) for t in compose],
            "peak_rss_mib": round(peak_kib / 1024, 1), "every_model": peak_with_every_model(),
            "goals": {"cold_start_over_import_gradio": 1.2, "generate_default_s": 2, "compose_default_s": 3,
                      "peak_rss_mib_every_model": 2048}}


def machine() -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    bytecode = "not written (PYTHONDONTWRITEBYTECODE)" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "cached"
    return (f"{os.cpu_count()} cores, {cpu}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"Python bytecode of the studio's own modules {bytecode}")


def to_markdown(result: dict) -> str:
    lines = [f"# Foundation benchmark ({result['date']})", "", f"Machine: {result['machine']}", "",
             "## Studio loop vs diffusers DDIMPipeline (DDIM, 20 steps, same UNet and seed)", "",
             "Images per second: best of the pairs. Ratio: the median over alternated pairs of the pipeline's seconds "
             "over the loop's, with a 95% bootstrap interval; an interval that covers 1 is no difference.", "",
             *([f"Measured {result['loop_date']} ({result['loop_machine']}).", ""] if "loop_date" in result else []),
             "| model | batch | studio img/s | diffusers img/s | ratio [95%] (goal >= 1.0) |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['batch']} | {r['studio_img_per_s']} | {r['diffusers_img_per_s']} | {r['ratio']} "
              f"[{r.get('ratio_low', '?')}, {r.get('ratio_high', '?')}] |" for r in result["loop_vs_pipeline"]]
    lines += ["", "## Denoiser forward vs plain matmul (fp32)", "",
              "| model | batch | MFLOP/image | denoiser GFLOP/s | matmul GFLOP/s | share |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['batch']} | {r['mflop_per_image']} | {r['denoiser_gflops']} | {r['matmul_gflops']} | "
              f"{r['share_of_matmul']} |" for r in result["compute"]]
    if "compile" in result:
        lines += ["", "## torch.compile (inductor) against eager, batch 8 (4 images with CFG)", "",
                  *([f"Measured {result['compile_date']}.", ""] if "compile_date" in result else []),
                  "| model | compile s (first call) | eager ms | compiled ms | speedup | Generates at default steps "
                  "to pay back |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['compile_s']} | {r['eager_ms']} | {r['compiled_ms']} | {r['speedup']} | "
                  f"{r['generates_to_pay_back'] if r['generates_to_pay_back'] is not None else 'never (not faster)'} |"
                  for r in result["compile"]]
    app = result["app"]
    every = app["every_model"]
    lines += ["", "## App", "", *([f"Measured {result['app_date']} ({result['app_machine']}).", ""]
                                  if "app_date" in result else []),
              "| figure | measured | goal |", "|---|---|---|",
              f"| `python -c \"import gradio\"` (best of {len(app.get('import_gradio_s_all', [0] * 3))}) | "
              f"{app['import_gradio_s']} s | (the floor) |",
              f"| cold start to first HTTP 200 (best of {len(app.get('cold_start_s_all', [0] * 2))}) | {app['cold_start_s']} s "
              f"({app['cold_start_over_import_gradio']}x import gradio) | <= 1.2x |",
              *([f"| the same, median of {len(app['cold_start_s_all'])} alternated pairs' ratios [95%] | "
                 f"{app['pair_ratio_median']}x [{app['pair_ratio_low']}, {app['pair_ratio_high']}] | <= 1.2x |"]
                if "pair_ratio_median" in app else []),
              *([f"| `python -c \"import gradio, os; os._exit(0)\"`: the import without the interpreter's exit "
                 f"(best of {len(app['import_gradio_no_exit_s_all'])}) | {app['import_gradio_no_exit_s']} s |  |",
                 f"| cold start over that (best over best; median of the pairs' ratios [95%]) | "
                 f"{app['cold_start_over_import_gradio_no_exit']}x; {app['no_exit_pair_ratio_median']}x "
                 f"[{app['no_exit_pair_ratio_low']}, {app['no_exit_pair_ratio_high']}] | (context) |"]
                if "import_gradio_no_exit_s" in app else []),
              *([f"| a Generate at defaults sent at the first HTTP 200: answered after | "
                 f"{app['first_action']['generate_answered_after_s']} s (warm-up imports, loads, sampling) | |"]
                if "first_action" in app else []),
              f"| one Generate at defaults (gradio_client, best of 3) | {app['generate_default_s']} s | < 2 s |",
              f"| one Compose at defaults (gradio_client, best of 3) | {app['compose_default_s']} s | < 3 s |",
              f"| peak memory, app after the calls above | {app['peak_rss_mib']} MiB | |",
              f"| peak memory, app built and all {every['models']} zoo models loaded in turn | {every['peak_rss_mib']} MiB "
              f"(held at the end {every['held_at_end_mib']} MiB) | < 2048 MiB |", ""]
    if "timeline" in app:
        tl = app["timeline"]
        lines += ["### Where a start's seconds go (one process, seconds since it started)", "",
                  "| import gradio | + the studio's modules | page built | first HTTP 200 | launch returned | "
                  "warm-up done (torch, diffusers, networks) |", "|---|---|---|---|---|---|",
                  f"| {tl['import_gradio']} | {tl['import_studio']} | {tl['build']} | {tl['first_200']} | "
                  f"{tl['launch_returned']} | {tl['warm_up_done']} |", "",
                  f"torch imported when the page was built: {'yes' if tl['torch_imported_at_build'] else 'no'}; "
                  f"at the first HTTP 200: {'yes' if tl['torch_imported_at_first_200'] else 'no'}.", ""]
    return "\n".join(lines)


def main(loop_only: bool = False, compile_only: bool = False, app_only: bool = False) -> dict:
    torch.set_num_threads(os.cpu_count() or 1)
    manager = ModelManager(device="cpu")
    manager.register_zoo()
    if loop_only or compile_only or app_only:  # one part again, the rest of the last run kept
        result = json.loads((ROOT / "results" / "foundation.json").read_text())
        if app_only:
            result.update(app=app_figures(), app_date=time.strftime("%Y-%m-%d %H:%M"), app_machine=machine())
        if loop_only:
            result.update(loop_vs_pipeline=loop_vs_pipeline(manager), loop_date=time.strftime("%Y-%m-%d %H:%M"),
                          loop_machine=machine())
        if compile_only:
            result.update(compile=compile_payback(manager), compile_date=time.strftime("%Y-%m-%d %H:%M"))
    else:
        result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
                  "loop_vs_pipeline": loop_vs_pipeline(manager), "compute": compute_efficiency(manager),
                  "compile": compile_payback(manager), "app": app_figures()}
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / "foundation.json").write_text(json.dumps(result, indent=2) + "\n")
    md = to_markdown(result)
    (ROOT / "results" / "foundation.md").write_text(md)
    print(md)
    return result


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loop", action="store_true", help="only the loop-vs-pipeline ratios (the rest of the last run kept)")
    ap.add_argument("--compile", action="store_true", help="only the torch.compile payback (the rest of the last run kept)")
    ap.add_argument("--app", action="store_true", help="only the app figures (the rest of the last run kept)")
    args = ap.parse_args()
    main(args.loop, args.compile, args.app)
