"""Train: train a digits diffusion model live and compare objectives (issue 23).

Papers: Esser et al. 2024 ("Scaling Rectified Flow Transformers", SD3: rectified flow and its timestep
densities), Yu et al. 2025 (REPA: align a block's hidden states to a frozen pretrained encoder), Xiang et al.
2025 (DDAE++: self-conditioning of the decoder on the network's own features). The recipe and its switches are
:class:`studio.train.diffusion.DigitsRecipe`; the formulas and their sources are in
:mod:`studio.train.objectives` and :class:`studio.nets.unets.SelfCondUNet2DModel`.

A run is ``accelerate launch -m studio.train.lab`` in a subprocess (:func:`launch_command`), so a machine with
several GPUs trains on all of them; this generator follows its files in ``runs/<run>/`` (one loss line a step,
an evaluation every N steps: FD-digits and judge accuracy of a fixed-seed sample, read by the studio's judges,
and a sample grid) and yields them as progress. ``stop()`` asks the process to end after its current step
(``runs/<run>/STOP``): it saves a checkpoint, evaluates and writes its model; a process that does not end
within :data:`STOP_GRACE` seconds is killed with its children. The result's model folder is what Register
hands to the model manager (Generate, Classify and Theory drive it).

Deviations from the papers (also in docs/train.md): a 0.26 M (or 1.05 M) parameter UNet on 16 x 16 digits, not
a DiT / SiT / MMDiT; REPA's encoder is a small SimCLR CNN trained on the digits here (``simclr-digits``), not
DINOv2; DDAE++'s UNet self-conditioning follows the paper's description (its UNet code is not public).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np

from studio import lazy
from studio.core.device import MAX_SEED
from studio.core.params import ParamError, spec, validate
from studio.core.sampling import Progress
from studio.errors import UserError

torch = lazy.load("torch")

Objective = Literal["eps", "v", "rf-uniform", "rf-lognorm", "rf-mode", "rf-cosmap"]
OBJECTIVE_LABELS = {"eps": "DDPM, epsilon", "v": "DDPM, v", "rf-uniform": "Rectified flow, uniform t",
                    "rf-lognorm": "Rectified flow, logit-normal(0, 1) t (SD3)", "rf-mode": "Rectified flow, mode(1.29) t",
                    "rf-cosmap": "Rectified flow, CosMap t"}
SIZE_LABELS = {"small": "small (0.26 M parameters)", "base": "base (1.05 M, the zoo's digits-cond)"}
POLL_SECONDS = 1.0
STOP_GRACE = 120.0  # seconds a stopped run has to checkpoint, evaluate and write its model before it is killed
MEMORY_SHARE = 0.5  # a run may plan to use at most this share of the memory available when it starts
ACTIVATION_BYTES = {"small": 0.87e6 * 1.3, "base": 1.75e6 * 1.3}  # per image: forward outputs (measured) + margin


@dataclass
class Params:
    objective: Objective = field(default="rf-lognorm", metadata=spec(
        "Objective", "the path and what the network learns: DDPM (epsilon or v) or rectified flow with one of SD3's "
        "timestep densities"))
    repa: float = field(default=0.0, metadata=spec(
        "REPA lambda", "weight of the alignment to the frozen simclr-digits encoder (0: off; the paper's 0.5)",
        minimum=0.0, maximum=2.0, step=0.1))
    self_condition: bool = field(default=False, metadata=spec(
        "Self-conditioning (DDAE++)", "the decoder is conditioned on the network's pooled bottleneck features"))
    size: Literal["small", "base"] = field(default="small", metadata=spec("Network", "the digits UNet's width"))
    steps: int = field(default=600, metadata=spec("Steps", "training steps", minimum=1, maximum=20_000))
    batch: int = field(default=64, metadata=spec("Batch", "images a step (over all processes)", minimum=1,
                                                 maximum=65_536))
    lr: float = field(default=2e-3, metadata=spec("Learning rate", "AdamW's peak learning rate (50 warm-up steps, "
                                                  "then cosine down to a tenth)", minimum=1e-7, maximum=1.0))
    seed: int = field(default=0, metadata=spec("Seed", "initial weights and data order", minimum=0, maximum=MAX_SEED))
    evaluate_every: int = field(default=100, metadata=spec(
        "Evaluate every", "steps between evaluations (FD-digits, judge accuracy, sample grid)", minimum=10,
        maximum=20_000))
    eval_images: int = field(default=100, metadata=spec("Images per evaluation", "a fixed-seed sample, classes 0-9 "
                                                        "in turn", minimum=20, maximum=1000, step=10))
    processes: int = field(default=0, metadata=spec(
        "Processes", "accelerate processes (0: one per GPU, or one on a CPU machine)", minimum=0, maximum=64,
        advanced=True))


@dataclass
class TrainResult:
    run: str
    model_folder: Path  # server-side; never shown to a browser
    parameters: dict
    curves: dict  # {"loss": [[step, loss], ...], "evals": [{"step", "fd_digits", "judge_accuracy", ...}, ...]}
    tensors: torch.Tensor | None  # the last sample grid, (1, 1, H, W) in [-1, 1]
    steps_done: int
    seconds: float
    stopped: bool
    weights_sha256: str

    @property
    def label(self) -> str:
        return run_label(self.parameters)


def run_label(p: dict) -> str:
    extra = ([f"REPA {p['repa']:g}"] if p.get("repa") else []) + (["self-cond"] if p.get("self_condition") else [])
    return " + ".join([p["objective"], *extra]) + f" ({p['size']}, seed {p['seed']})"


def runs_dir() -> Path:
    from studio.train.common import RUNS_DIR

    return RUNS_DIR


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def available_memory() -> int:
    """Bytes the run may use: the free memory of GPU 0 on a GPU machine, else MemAvailable."""
    if gpu_count():
        return int(torch.cuda.mem_get_info(0)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))  # no /proc: the free pages


def check(p: Params) -> int:
    """Validate ``p`` before anything starts; returns the number of processes."""
    validate(p)
    processes = p.processes or max(1, gpu_count())
    if p.batch < processes:
        raise ParamError(f"Batch {p.batch} is smaller than the {processes} processes; each needs at least one image")
    per_process = p.batch // processes
    need = per_process * ACTIVATION_BYTES[p.size] + 2e8  # + weights, optimizer, judges, the interpreter
    have = available_memory() * MEMORY_SHARE / (1 if gpu_count() else processes)
    if need > have:
        fits = max(1, int((have - 2e8) / ACTIVATION_BYTES[p.size])) * processes
        raise ParamError(f"a batch of {p.batch} needs about {need / 2**30:.1f} GiB per process, more than this "
                         f"machine can give a run ({have / 2**30:.1f} GiB); use a batch of at most {fits}")
    return processes


def launch_command(p: Params, run: str, processes: int) -> list[str]:
    """``accelerate launch`` of :mod:`studio.train.lab` with ``p``'s switches (several processes: ``--multi_gpu``,
    which on a CPU machine runs gloo processes)."""
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [str(accelerate), "launch", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["--multi_gpu", "--num_processes", str(processes)] if processes > 1 else ["--num_processes", "1"]
    cmd += ["-m", "studio.train.lab", "--run", run, "--objective", p.objective, "--size", p.size, "--repa", str(p.repa),
            "--steps", str(p.steps), "--batch", str(p.batch), "--lr", repr(p.lr), "--seed", str(p.seed),
            "--evaluate-every", str(p.evaluate_every), "--eval-images", str(p.eval_images),
            "--checkpoint-every", str(max(p.evaluate_every, 50))]
    return cmd + (["--self-condition"] if p.self_condition else [])


def launch_env(processes: int) -> dict:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "STUDIO_RUNS": str(runs_dir()), "PYTHONPATH": os.pathsep.join(
        [str(root), *filter(None, [os.environ.get("PYTHONPATH")])]), "ACCELERATE_DISABLE_RICH": "1",
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if not gpu_count():
        env.update(CUDA_VISIBLE_DEVICES="", ACCELERATE_USE_CPU="true",
                   OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // processes)))
    return env


def read_jsonl(path: Path) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:  # a line being written
            break
    return out


def read_curves(folder: Path) -> dict:
    from studio.train.diffusion import EVAL_FILE, LOSS_FILE

    return {"loss": [[r["step"], r["loss"]] for r in read_jsonl(folder / LOSS_FILE)],
            "evals": read_jsonl(folder / EVAL_FILE)}


def read_grid(folder: Path) -> torch.Tensor | None:
    from PIL import Image

    from studio.train.watch import SAMPLES_FILE

    try:
        with Image.open(folder / SAMPLES_FILE) as im:
            a = np.asarray(im.convert("L"), dtype=np.float32)
    except (OSError, ValueError):
        return None
    return torch.from_numpy(a / 127.5 - 1)[None, None]


def kill_tree(proc: subprocess.Popen) -> None:
    """End the run's process group (accelerate and its workers): SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue


PATHS = re.compile(r"(/[^\s'\"]+)+")


def public_message(text: str) -> str:
    """An error from the run's process without server paths."""
    return PATHS.sub("<path>", text)[-400:]


def run(p: Params, manager=None, stop: Callable[[], bool] | None = None) -> Iterator[Progress | TrainResult]:
    """Train in an ``accelerate launch`` subprocess; progress about once a second, then the result."""
    from studio.train.diffusion import STOP_FILE
    from studio.train.lab import MODEL_DIR, RESULT_FILE

    processes = check(p)
    run_name = f"lab-{p.objective}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    folder = runs_dir() / run_name
    folder.mkdir(parents=True)
    parameters = {**asdict(p), "processes": processes, "run": run_name, "method": "train"}
    began, asked_stop, seen = time.time(), None, None
    with open(folder / "log.txt", "wb") as log:
        proc = subprocess.Popen(launch_command(p, run_name, processes), stdout=log, stderr=subprocess.STDOUT,
                                env=launch_env(processes), start_new_session=True)
    try:
        yield Progress(0, p.steps, info={"status": f"starting {processes} process(es)..."})
        while proc.poll() is None:
            if stop is not None and asked_stop is None and stop():
                (folder / STOP_FILE).touch()
                asked_stop = time.time()
            if asked_stop is not None and time.time() - asked_stop > STOP_GRACE:
                kill_tree(proc)
                break
            curves = read_curves(folder)
            marker = (len(curves["loss"]), len(curves["evals"]))
            if marker != seen and curves["loss"]:
                seen = marker
                yield progress(p, curves, folder)
            time.sleep(POLL_SECONDS)
    finally:
        kill_tree(proc)  # the generator was closed (the job stopped or the server is going down)
    try:
        outcome = json.loads((folder / RESULT_FILE).read_text())
    except (OSError, ValueError):
        outcome = {"error": f"the training process ended (exit code {proc.returncode}) without a result"}
    if "error" in outcome:
        raise UserError(f"training failed: {public_message(outcome['error'])}")
    curves = read_curves(folder)
    yield progress(p, curves, folder)
    yield TrainResult(run_name, folder / MODEL_DIR, parameters, curves, read_grid(folder), outcome["step"],
                      round(time.time() - began, 1), bool(outcome.get("stopped")) or asked_stop is not None,
                      outcome["weights_sha256"])


def progress(p: Params, curves: dict, folder: Path) -> Progress:
    last = curves["evals"][-1] if curves["evals"] else {}
    info = {"loss": curves["loss"][-1][1] if curves["loss"] else float("nan"), "curves": curves}
    if last:
        info.update(fd_digits=last["fd_digits"]["value"], judge_accuracy=last["judge_accuracy"]["value"])
    step = curves["loss"][-1][0] if curves["loss"] else 0
    return Progress(step, p.steps, preview=read_grid(folder) if last else None, info=info)


def register(result: TrainResult, manager, key: str | None = None) -> str:
    """Make the run's model one the manager serves (Generate, Classify, Theory list it); returns its key."""
    if not (result.model_folder / "studio.json").exists():
        raise UserError("this run has no model to register (it ended before its first checkpoint)")
    key = key or f"trained-{result.run.removeprefix('lab-')}"
    manager.register(key, lambda f=result.model_folder: _load(f), replace=True,
                     info={**json.loads((result.model_folder / "studio.json").read_text()),
                           "trained_in": "Train tab", "train_parameters": result.parameters})
    return key


def _load(folder: Path):
    from studio.core.loading import load_folder

    return load_folder(folder)
