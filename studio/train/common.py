"""What every recipe shares: resumable checkpoints, export to the zoo, the MANIFEST.

Checkpoints live in ``runs/<name>/`` (ignored by git): model and EMA weights as safetensors,
the optimizer state with ``torch.save`` (read back with ``weights_only=True``), and a JSON of
the step count and elapsed seconds, written atomically every ``every`` steps so a stopped run
loses little. Recipes run under Hugging Face ``accelerate``: ``accelerate launch -m
studio.cli train <name>`` spreads the batch over several GPUs unchanged.

Under accelerate every recipe follows one pattern (:func:`make_accelerator`): the networks and
optimizers go through ``accelerator.prepare`` (data parallel: each process draws its own batch,
the gradients are averaged), each process draws from its own random stream (:func:`process_seed`,
:func:`process_entropy`: process 0 draws exactly what a plain one-process run always drew, so
``studio train NAME`` rebuilds the shipped weights bit for bit), the logged loss is the mean over
processes (:class:`StepLog`, ``runs/<run>/loss.jsonl``, one line per step), and only the main
process writes checkpoints and exports. The global batch is the recipe's batch times the number
of processes; the recipes take no gradient accumulation (their batches are a few hundred small
images, far from any GPU's memory, and accumulation would change what a recipe "step" means for
their lr schedules, EMA and checkpoints).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np

from studio import lazy
from studio.core.loading import ZOO_DIR, read_manifest, sha256

torch = lazy.load("torch")
safetensors_torch = lazy.load("safetensors.torch")  # imports torch

RUNS_DIR = Path(os.environ.get("STUDIO_RUNS", Path.cwd() / "runs"))
LOSS_FILE = "loss.jsonl"  # in runs/<run>: {"step", "loss" (mean over processes), ...} per optimizer step


def make_accelerator(find_unused_parameters: bool = False):
    """This process's ``accelerate.Accelerator`` (one process, the plain CPU/GPU, outside ``accelerate launch``).
    ``find_unused_parameters``: for networks with parameters no step uses (DDP must then look for them)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if find_unused_parameters else None
    return Accelerator(kwargs_handlers=handlers)


def process_index(accelerator=None) -> int:
    return 0 if accelerator is None else accelerator.process_index


def process_seed(seed: int, accelerator=None) -> int:
    """The seed of this process's data stream: ``seed`` itself on process 0 (a one-process run draws
    exactly what the recipe always drew), a seed derived from ``(seed, i)`` on process i > 0."""
    i = process_index(accelerator)
    return seed if i == 0 else int(np.random.default_rng([seed, i]).integers(2**31))


def process_entropy(accelerator, *words: int) -> list[int]:
    """Entropy for ``np.random.default_rng``: ``words`` on process 0 (the recipe's old stream),
    ``words + [i]`` on process i > 0 (numpy pads entropy with zeros, so i = 0 could not be appended)."""
    i = process_index(accelerator)
    return list(words) if i == 0 else [*words, i]


def is_main(accelerator=None) -> bool:
    return accelerator is None or accelerator.is_main_process


class StepLog:
    """``runs/<run>/loss.jsonl``: one line per optimizer step, the loss (or several named terms)
    averaged over every process's batch (``accelerator.reduce``, a collective: every process calls
    :meth:`write`), written by the main process only. ``start``: the step the run starts (or resumes) at; lines of later steps (a stopped run's steps
    past its last checkpoint) are dropped, so the file holds one line per step."""

    def __init__(self, accelerator, run: str | Path, start: int = 0, root: Path | None = None):
        self.accelerator = accelerator
        self.path = Path(run) / LOSS_FILE if isinstance(run, Path) else (root or RUNS_DIR) / run / LOSS_FILE
        if is_main(accelerator) and self.path.exists():
            keep = [line for line in self.path.read_text().splitlines()
                    if start and line.strip() and json.loads(line)["step"] <= start]
            self.path.write_text("".join(line + "\n" for line in keep))

    def write(self, step: int, loss: torch.Tensor | dict, **extra) -> dict:
        """Log ``loss`` (a tensor, or a dict of named scalar tensors) at ``step``; returns the means (unrounded;
        in a one-process run exactly ``float(loss)``)."""
        terms = loss if isinstance(loss, dict) else {"loss": loss}
        values = torch.stack([torch.as_tensor(v).detach().float().reshape(()) for v in terms.values()])
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            values = self.accelerator.reduce(values.to(self.accelerator.device), reduction="mean")
        means = {k: float(v) for k, v in zip(terms, values.cpu())}
        if is_main(self.accelerator):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as fh:
                fh.write(json.dumps({"step": step, **{k: round(v, 6) for k, v in means.items()}, **extra}) + "\n")
        return means


def weights_digest(*modules: torch.nn.Module) -> str:
    """SHA-256 of the modules' parameters in order: equal on every process of a data-parallel run."""
    import hashlib

    h = hashlib.sha256()
    for module in modules:
        for p in module.parameters():
            h.update(p.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}"


class Checkpoint:
    """Resumable state of one recipe run in ``runs/<name>``."""

    def __init__(self, name: str, root: Path | None = None):
        self.dir = (root or RUNS_DIR) / name
        self.meta_path = self.dir / "state.json"

    def exists(self) -> bool:
        return self.meta_path.exists()

    def save(self, step: int, seconds: float, modules: dict[str, torch.nn.Module],
             optimizer: torch.optim.Optimizer | None = None, extra: dict | None = None) -> None:
        tmp = self.dir.with_name(self.dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for key, module in modules.items():
            state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
            safetensors_torch.save_file(state, tmp / f"{key}.safetensors")
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, "seconds": seconds, **(extra or {})}))
        written = {p.name for p in tmp.iterdir()}
        for item in list(self.dir.iterdir()) if self.dir.exists() else ():  # the run's logs, samples, exports stay
            if item.name not in written:
                shutil.move(item, tmp / item.name)
        old = self.dir.with_name(self.dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if self.dir.exists():
            self.dir.rename(old)
        tmp.rename(self.dir)
        shutil.rmtree(old, ignore_errors=True)

    def load(self, modules: dict[str, torch.nn.Module],
             optimizer: torch.optim.Optimizer | None = None) -> dict:
        for key, module in modules.items():
            module.load_state_dict(safetensors_torch.load_file(self.dir / f"{key}.safetensors"))
        if optimizer is not None and (self.dir / "optimizer.pt").exists():
            import numpy as np

            # numpy scalars are plain data; allow them (older checkpoints stored the lr as one)
            with torch.serialization.safe_globals([np._core.multiarray.scalar, np.dtype, np.dtypes.Float64DType]):
                optimizer.load_state_dict(torch.load(self.dir / "optimizer.pt", weights_only=True))
            for group in optimizer.param_groups:
                group["lr"] = float(group["lr"])
        return json.loads(self.meta_path.read_text())


def write_manifest_entry(name: str, info: dict, zoo: Path = ZOO_DIR) -> dict:
    """Record (or update) ``name``: files with sha256 and size, plus ``info`` (recipe, time, quality)."""
    manifest = read_manifest(zoo)
    entry = dict(manifest.get(name, {}))
    entry.update(info)
    folder = zoo / name
    entry["files"] = {
        str(p.relative_to(folder)): {"sha256": sha256(p), "bytes": p.stat().st_size}
        for p in sorted(folder.rglob("*")) if p.is_file()
    }
    entry["bytes"] = sum(f["bytes"] for f in entry["files"].values())
    manifest[name] = entry
    (zoo / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return entry


def record_zoo_quality(name: str, measure, defaults, keep: str) -> dict:
    """Measure the exported zoo entry ``name`` with ``measure(manager)`` (a CPU manager on the zoo), write
    ``defaults(quality)`` into its studio.json (the settings chosen on the selection set become the tabs'
    defaults) and the figures into its MANIFEST ``quality``, keeping the figure ``keep`` recorded at export."""
    from studio.core.manager import ModelManager

    manager = ModelManager(device="cpu")
    manager.register_zoo()
    quality = measure(manager)
    quality["measured"] = time.strftime("%Y-%m-%d")
    path = ZOO_DIR / name / "studio.json"
    info = json.loads(path.read_text())
    info.update(defaults(quality))
    path.write_text(json.dumps(info, indent=2) + "\n")
    old = read_manifest()[name].get("quality", {})
    write_manifest_entry(name, {"quality": {keep: old.get(keep), **quality}})
    return quality


def update_quality(name: str, quality: dict, zoo: Path = ZOO_DIR) -> None:
    """Merge measured figures into ``MANIFEST[name]["quality"]`` without touching the files."""
    manifest = read_manifest(zoo)
    manifest.setdefault(name, {}).setdefault("quality", {}).update(quality)
    (zoo / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int) -> torch.Tensor:
    """Random integer translation of each image by up to ``max_shift`` pixels (background -1 fills in)."""
    pad = torch.nn.functional.pad(x, [max_shift] * 4, value=-1.0)
    out = torch.empty_like(x)
    h, w = x.shape[-2:]
    d = torch.randint(0, 2 * max_shift + 1, (x.shape[0], 2), generator=gen)
    for i, (dy, dx) in enumerate(d.tolist()):
        out[i] = pad[i, :, dy:dy + h, dx:dx + w]
    return out


class Timer:
    """Wall-clock seconds, resumable across checkpoints."""

    def __init__(self, already: float = 0.0):
        self.start = time.perf_counter() - already

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


class LossLog:
    """Losses of a training loop, one float per step: ``mean(last=n)`` for progress bars and logs."""

    def __init__(self):
        self.values: list[float] = []

    def append(self, value: float) -> None:
        self.values.append(float(value))

    def mean(self, last: int | None = None) -> float:
        tail = self.values[-last:] if last else self.values
        return float(sum(tail) / len(tail)) if tail else float("nan")

    def __len__(self) -> int:
        return len(self.values)


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, parameters=None, *,
                   clip: float | None = 1.0, accelerator=None, ema=None, log: LossLog | None = None,
                   scheduler=None) -> float:
    """One training step after a forward pass: backward, clip the gradient norm of ``parameters``
    to ``clip`` (None: no clipping), step the optimizer (and the lr ``scheduler``), zero the
    gradients, step ``ema`` (diffusers ``EMAModel``) on ``parameters``, and log the loss.

    With an ``accelerate.Accelerator`` the backward and the clipping go through it (mixed
    precision, several processes). Returns the loss as a float.
    """
    parameters = list(parameters) if parameters is not None else [
        p for group in optimizer.param_groups for p in group["params"]]
    if accelerator is not None:
        accelerator.backward(loss)
        if clip is not None:
            accelerator.clip_grad_norm_(parameters, clip)
    else:
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(parameters, clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if ema is not None:
        ema.step(parameters)
    value = float(loss.detach())
    if log is not None:
        log.append(value)
    return value
