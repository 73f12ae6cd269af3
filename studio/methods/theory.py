"""Theory: one velocity field seen four ways, and the Gaussian part of sampling skipped in closed form.

**The playground** (:func:`run`). A 2-D toy distribution whose score is exact at every noise level
(:mod:`studio.core.toy2d`: a mixture of Gaussians, two moons, a ring, a spiral, each a mixture of
narrow Gaussians), a path (variance preserving, as DDPM; or rectified flow, ``x_t = (1 - t) x0 + t
eps``) and a sampler (the reverse SDE, or the probability-flow ODE). The "network" predicts one
parametrisation exactly (noise, clean image, score or velocity); the sampler converts it to what it
needs (the velocity for the ODE, the score for the SDE) with the conversion table of "The
Principles of Diffusion Models" (Lai, Song, Kim, Mitsufuji, Ermon, 2025). So the particles move
identically whichever parametrisation is chosen, and the result says by how much the four
conversions to the velocity disagree (float64 round-off). Particles, a few trails and the field at
the chosen time are returned for drawing, with the energy distance of the final particles to
exact samples (beside that of two exact sample sets: the sampling noise).

**The teleport panel** (:func:`compare_teleport`): Generate twice with the same seeds, without and
with analytical teleportation (Wang & Vastola, TMLR 2024; :mod:`studio.core.gaussian`), the
images side by side with the network evaluations, seconds and how far each image moved.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from typing import Iterator, Literal

import numpy as np

from studio import __version__, lazy
from studio.core.device import MAX_SEED
from studio.core.params import ParamError, spec, validate
from studio.core.results import ImageResult
from studio.core.sampling import Progress
from studio.methods import generate

torch = lazy.load("torch")

Process = Literal["vp-ode", "vp-sde", "rf-ode"]
PROCESSES = {"vp-ode": ("vp", "ode"), "vp-sde": ("vp", "sde"), "rf-ode": ("rf", "ode")}
PROCESS_LABELS = {"vp-ode": "VP probability-flow ODE", "vp-sde": "VP reverse SDE (DDPM)",
                  "rf-ode": "Rectified flow ODE"}
PARAMETRISATION_LABELS = {"eps": "noise (epsilon)", "x0": "clean sample (x0)", "score": "score (grad log p_t)",
                          "velocity": "velocity (dx/dt)"}
GRID_HALF_WIDTH = 3.0  # the field and the density are drawn on [-3, 3]^2
DENSITY_POINTS = 60
REFERENCE_SAMPLES = 1000


@dataclass
class Params:
    distribution: Literal["gaussians", "two moons", "ring", "spiral"] = field(default="two moons", metadata=spec(
        "Distribution", "The data: a mixture of eight Gaussians, or a shape drawn by many narrow Gaussians "
        "(so its score is exact at every noise level)."))
    parametrisation: Literal["eps", "x0", "score", "velocity"] = field(default="eps", metadata=spec(
        "Parametrisation", "What the 'network' predicts (exactly here). The sampler converts it; the particles "
        "move the same whichever you pick."))
    process: Process = field(default="vp-ode", metadata=spec(
        "Process", "The path and the sampler: variance preserving (DDPM) with its probability-flow ODE or its "
        "reverse SDE, or rectified flow (noised along straight lines, x_t = (1 - t) x0 + t eps) with its ODE."))
    time: float = field(default=0.5, metadata=spec(
        "Time t", "Show the particles and the field at this time: 1 is noise, 0 is data.", minimum=0.0,
        maximum=1.0, step=0.01))
    particles: int = field(default=500, metadata=spec("Particles", "How many samples to move.", minimum=1,
                                                      maximum=3000, step=1))
    steps: int = field(default=100, metadata=spec("Steps", "Sampler steps from t = 1 to t = 0.", minimum=1,
                                                  maximum=1000, step=1))
    seed: int = field(default=0, metadata=spec("Seed", "The starting noise (and the SDE's noise).", minimum=0,
                                               maximum=MAX_SEED, step=1))
    heun: bool = field(default=False, metadata=spec("Heun (2nd order)", "ODE only: Heun's method instead of "
                                                    "Euler (two field evaluations a step).", advanced=True))
    arrows: int = field(default=15, metadata=spec("Arrows per side", "The field is drawn on an n x n grid.",
                                                  minimum=4, maximum=40, step=1, advanced=True))
    trails: int = field(default=30, metadata=spec("Trails", "How many particles' paths to draw.", minimum=0,
                                                  maximum=300, step=1, advanced=True))


@dataclass
class PlaygroundResult:
    times: np.ndarray         # (S + 1,) from t_max down to t_min
    states: np.ndarray        # (S + 1, n, 2): every particle at every time
    shown: int                # the index of the state nearest the asked time
    grid: np.ndarray          # (G * G, 2) points where the field is drawn
    fields: dict[str, np.ndarray]  # each parametrisation's exact prediction on the grid at the shown time
    velocity_from: dict[str, np.ndarray]  # the velocity converted from each of them
    mismatch: float           # max |velocity from one parametrisation - from another| on the grid
    density: np.ndarray       # (D, D) log p_t on the density grid at the shown time
    density_axis: np.ndarray  # (D,) its coordinates (both axes)
    reference: np.ndarray     # exact data samples
    energy: float             # energy distance, final particles vs exact samples
    energy_floor: float       # energy distance between two exact sample sets of the same sizes
    evaluations: int          # field evaluations per particle
    seconds: float
    parameters: dict

    @property
    def tensors(self) -> np.ndarray:
        return self.states


def _grid(n: int) -> torch.Tensor:
    from studio.core import toy2d  # imports torch: not while the page is built
    axis = torch.linspace(-GRID_HALF_WIDTH, GRID_HALF_WIDTH, n, dtype=toy2d.DTYPE)
    return torch.cartesian_prod(axis, axis)[:, [1, 0]]  # x varies fastest


def run(p: Params, manager=None) -> Iterator[Progress | PlaygroundResult]:
    """Move ``p.particles`` from noise to data with the chosen process and parametrisation; yield
    progress, then a :class:`PlaygroundResult`. Needs no model (``manager`` is unused)."""
    from studio.core import toy2d  # imports torch: not while the page is built
    validate(p)
    t0 = time.perf_counter()
    gmm = toy2d.toy(p.distribution)
    path_name, sampler = PROCESSES[p.process]
    path = toy2d.PATHS[path_name]()
    gen = torch.Generator().manual_seed(p.seed)
    calls = 0

    def predict(x, t):
        nonlocal calls
        calls += 1
        return toy2d.exact(gmm, p.parametrisation, x, t, path)

    times = path.grid(p.steps)
    x = toy2d.prior(p.particles, 2, path, gen)
    if sampler == "ode":
        states = toy2d.ode(toy2d.velocity(predict, p.parametrisation, path), x, times, heun=p.heun)
    else:
        def score(x, t):
            return toy2d.convert(predict(x, t), p.parametrisation, "score", x, t, path)
        states = toy2d.sde(score, path, x, times, gen)
    out, every = [], max(1, p.steps // 10)
    for i, state in enumerate(states):
        out.append(state)
        if i and (i % every == 0 or i == p.steps):
            yield Progress(step=i, total=p.steps)
    traj = torch.stack(out)

    ref_gen = torch.Generator().manual_seed(p.seed + 1)
    reference = gmm.sample(REFERENCE_SAMPLES, ref_gen)
    floor = toy2d.energy_distance(gmm.sample(min(p.particles, REFERENCE_SAMPLES), ref_gen), reference)
    parameters = {"method": "theory", **asdict(p), "studio_version": __version__}
    yield PlaygroundResult(
        times=times.numpy(), states=traj.float().numpy(), reference=reference.numpy(),
        energy=toy2d.energy_distance(traj[-1], reference), energy_floor=floor, evaluations=calls,
        seconds=time.perf_counter() - t0, parameters=parameters, **_snapshot(gmm, path, p, times, p.time))


def _snapshot(gmm: toy2d.GMM, path: toy2d.Path, p: Params, times: torch.Tensor, t: float) -> dict:
    """The :class:`PlaygroundResult` fields that depend on the shown time ``t``."""
    from studio.core import toy2d  # imports torch: not while the page is built
    shown = int((times - t).abs().argmin())
    t_shown = float(times[shown])
    pts = _grid(p.arrows)
    fields = {k: toy2d.exact(gmm, k, pts, t_shown, path) for k in toy2d.PARAMETRISATIONS}
    vel = {k: toy2d.convert(f, k, "velocity", pts, t_shown, path) for k, f in fields.items()}
    mismatch = max(float((v - vel[p.parametrisation]).abs().max()) for v in vel.values())
    axis = torch.linspace(-GRID_HALF_WIDTH, GRID_HALF_WIDTH, DENSITY_POINTS, dtype=toy2d.DTYPE)
    dens = gmm.log_prob(torch.cartesian_prod(axis, axis)[:, [1, 0]], path.alpha(t_shown), path.sigma(t_shown))
    return {"shown": shown, "grid": pts.numpy(), "fields": {k: v.numpy() for k, v in fields.items()},
            "velocity_from": {k: v.numpy() for k, v in vel.items()}, "mismatch": mismatch,
            "density": dens.reshape(DENSITY_POINTS, DENSITY_POINTS).numpy(), "density_axis": axis.numpy()}


def at_time(result: PlaygroundResult, t: float) -> PlaygroundResult:
    """The same run shown at another time (the time slider): the particles are already computed, only
    the field and the density are evaluated again."""
    from studio.core import toy2d  # imports torch: not while the page is built
    if not 0.0 <= t <= 1.0:
        raise ParamError(f"Time t must be between 0 and 1, got {t}")
    names = {f.name for f in dataclasses.fields(Params)}
    p = Params(**{k: v for k, v in result.parameters.items() if k in names})
    path = toy2d.PATHS[PROCESSES[p.process][0]]()
    snap = _snapshot(toy2d.toy(p.distribution), path, p, torch.as_tensor(result.times), t)
    return dataclasses.replace(result, parameters={**result.parameters, "time": t}, **snap)


# --- the teleport panel -------------------------------------------------------------------------------

def teleport_defaults() -> generate.Params:
    """The panel's starting point: the digits model at its benchmark setting (DDIM 20, 10 teleported)."""
    return dataclasses.replace(generate.Params(), model="digits-cond", scheduler="ddim", steps=20, teleport=10,
                               n_images=8, preview_every=0)


@dataclass
class TeleportComparison:
    full: ImageResult          # the learned sampler alone
    teleported: ImageResult    # the first k steps in closed form
    moved: np.ndarray          # per image: RMS pixel difference between the two, in [-1, 1] units
    evaluations: tuple[int, int]  # network evaluations per image (full, teleported)
    parameters: dict

    @property
    def tensors(self):
        return [self.full.tensors, self.teleported.tensors]


def compare_teleport(p: generate.Params, manager) -> Iterator[Progress | TeleportComparison]:
    """Generate ``p`` twice, with ``teleport=0`` and with ``p.teleport``, from the same seeds."""
    if p.teleport < 1:
        raise ParamError("Teleported steps must be at least 1 to compare (0 is the plain sampler)")
    if p.randomize_seed:
        raise ParamError("the comparison needs fixed seeds: untick Random seed")
    runs = []
    for k in (0, p.teleport):
        offset = p.steps if k else 0
        for item in generate.run(dataclasses.replace(p, teleport=k), manager):
            if isinstance(item, Progress):
                yield dataclasses.replace(item, step=item.step + offset, total=2 * p.steps - p.teleport)
            else:
                runs.append(item)
    full, tele = runs
    moved = (full.tensors - tele.tensors).flatten(1).pow(2).mean(1).sqrt().numpy()
    conditional = manager.info(p.model).get("conditioning") in ("class", "text")
    guided = 2 if conditional and p.guidance not in (0.0, 1.0) else 1  # classifier-free guidance: two a step
    evals = (guided * p.steps, guided * (p.steps - p.teleport))
    parameters = {"method": "theory.teleport", **{k: v for k, v in full.parameters.items() if k != "method"},
                  "teleport": p.teleport}
    yield TeleportComparison(full, tele, moved, evals, parameters)
