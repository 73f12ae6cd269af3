"""Forecast: TSDiff (Kollovieh et al., NeurIPS 2023), one *unconditional* diffusion model over
series windows that forecasts, refines and synthesises, compared with statsforecast baselines.

As the official code (amazon-science/unconditional-time-series-diffusion) does it:

* **Model space** (:func:`studio.data.series.make_window`). A window is ``context + horizon``
  points; channel 0 is the series, channels 1.. its seasonal lags, all divided by the mean
  absolute observed value of the context (GluonTS ``MeanScaler``). The denoiser
  (:class:`studio.nets.tsdiff.TSDiffNet`) predicts epsilon for every channel; T = 100, linear
  beta 1e-4 .. 0.1 (a diffusers ``DDPMScheduler``).
* **Forecast** by observation self-guidance on the denoised estimate (TSDiff-Q: pinball loss at
  q_i = i / (N + 1) per sample; TSDiff-MS: squared error), **refine** a baseline's samples by
  maximum likelihood or Langevin dynamics on the denoising loss at one step tau, **synthesise**
  windows: the samplers are in :mod:`studio.core.series_sampling`, the recipe and tau in
  :mod:`studio.train.forecast`.
* **Synthesis** is scored by the Linear Predictive Score (:func:`studio.core.metrics.linear_predictive_score`):
  a ridge model from context to horizon fit on synthetic windows, scored on real windows.
* **Train on my series** (:func:`train`): a model for an uploaded CSV, as a generator of
  progress that can be stopped and still gives the model trained so far.

Metrics: mean weighted quantile loss over q = 0.1..0.9 ("CRPS"; utilsforecast ``scaled_crps``)
and MASE, see :mod:`studio.core.metrics`. Baselines (:mod:`studio.core.baselines`): statsforecast
SeasonalNaive, AutoETS, AutoARIMA on the same history, their quantiles read off their Gaussian
prediction intervals.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Generator, Iterator, Literal

import numpy as np

from studio import __version__
from studio import lazy
from studio.core import metrics as M
from studio.core.baselines import BASELINES, BaseName, baseline_forecasts, gaussian_samples
from studio.core.device import MAX_SEED, random_seed
from studio.core.manager import ModelManager
from studio.core.models import SeriesDiffusion
from studio.core.params import ParamError, spec, validate
from studio.core.sampling import Progress
from studio.core.series_sampling import DEFAULT_SCALE, observation_guidance, refine, synthesize
from studio.data import series as S
from studio.data.series import Window, make_window
from studio.methods import method

torch = lazy.load("torch")

Guidance = Literal["quantile", "mse"]
Mode = Literal["forecast", "refine", "synthesize"]
GUIDANCE_LABELS = {"quantile": "TSDiff-Q", "mse": "TSDiff-MS"}
REFINER_LABELS = {"ml": "ML", "lmc": "LMC"}
SERIES_CHOICES: tuple[str, ...] = (*S.BUNDLED, "upload")


def model_key(series_name: str) -> str:
    return f"tsdiff-{series_name}"


def upload_key(series: S.Series) -> str:
    """Manager key of a model trained on an uploaded series: a hash of its data and set-up,
    never a user string."""
    h = hashlib.sha256(np.nan_to_num(series.values, nan=np.pi).tobytes())
    h.update(f"{series.freq}|{series.context}|{series.horizon}|{series.lags}".encode())
    return f"tsdiff-upload-{h.hexdigest()[:12]}"


def series_choices(manager: ModelManager) -> list[str]:
    """The Series dropdown: each bundled series whose series model the manager holds, then 'upload'."""
    keys = set(method("forecast").models(manager))
    return [s for s in S.BUNDLED if model_key(s) in keys] + ["upload"]


def synthesis_scores(series: S.Series, info: dict, synthetic: np.ndarray) -> dict:
    """LPS of ridge models fit on synthetic windows vs on real training windows (TRTR), both
    scored on the real windows that end in the backtest part of the series."""
    context = int(info["window"]) - int(info["horizon"])
    train_end = int(info.get("train_end", series.train_end))
    test = S.real_windows(series, info, start=max(0, train_end - context))
    if not len(test):
        return {"note": "no held-out windows to score on"}
    real_train = S.real_windows(series, info, end=train_end)
    scale = np.abs(real_train[:, :context]).mean(1, keepdims=True)
    real_train = real_train / np.where(scale > 1e-10, scale, 1.0)
    return {"synthetic": M.linear_predictive_score(synthetic, test, context),
            "real": M.linear_predictive_score(real_train, test, context) if len(real_train) else None,
            "test_windows": len(test), "synthetic_windows": len(synthetic)}


# ------------------------------------------------------------------------------ the method


@dataclass
class Params:
    series: str = field(default="elnino", metadata=spec(
        "Series", "a bundled statsmodels series, or 'upload' for a CSV you trained a model on",
        choices=SERIES_CHOICES))
    mode: Mode = field(default="forecast", metadata=spec(
        "Mode", "forecast with self-guidance, refine a baseline's forecast, or synthesise windows"))
    guidance: Guidance = field(default="quantile", metadata=spec(
        "Guidance", "quantile (TSDiff-Q: pinball loss at q_i per sample) or mse (TSDiff-MS)"))
    scale: float = field(default=DEFAULT_SCALE["quantile"], metadata=spec(
        "Guidance scale", "s in x <- x - s sigma_t^2 grad E; the paper uses 1 to 8", minimum=0.0, maximum=64.0,
        step=0.5))
    samples: int = field(default=100, metadata=spec("Samples", "forecast paths drawn", minimum=4, maximum=400,
                                                    step=1))
    horizon: int = field(default=0, metadata=spec(
        "Horizon", "points to forecast (0 = the model's; at most half its window)", minimum=0, maximum=200, step=1))
    context: int = field(default=0, metadata=spec(
        "Context", "observed points the guidance uses (0 = the whole window before the horizon, plus lags)",
        minimum=0, maximum=1000, step=1))
    holdout: int = field(default=1, metadata=spec(
        "Forecast origin", "how many horizons before the end the forecast starts: 1 holds out the last horizon "
        "as truth; 0 forecasts the real future (no truth to score)", minimum=0, maximum=20, step=1))
    sampler: Literal["ddpm", "ddim"] = field(default="ddim", metadata=spec(
        "Sampler", "DDIM with few steps (the default here, for speed) or DDPM (the official sampler, all 100 "
        "steps, ~5x slower); compared in benchmarks/results/forecast.md", advanced=True))
    # 20: the fewest DDIM steps admitted by quality per second (benchmarks/results/forecast_steps.md; 25 until 2026-12-03)
    ddim_steps: int = field(default=20, metadata=spec(
        "DDIM steps", "20: chosen by quality per second, its CRPS within 5% of the old default's 25 on held-out "
        "origins (benchmarks/results/forecast_steps.md)", minimum=2, maximum=100, step=1, advanced=True))
    base: BaseName = field(default="SeasonalNaive", metadata=spec("Base forecaster", "refine mode: whose samples"))
    refiner: Literal["lmc", "ml"] = field(default="lmc", metadata=spec(
        "Refiner", "Langevin (LMC) or maximum likelihood (SGD)"))
    iterations: int = field(default=20, metadata=spec("Refinement iterations", minimum=1, maximum=200, step=1))
    baselines: bool = field(default=True, metadata=spec(
        "Baselines", "also run SeasonalNaive, AutoETS and AutoARIMA on the same history"))
    seed: int = field(default=0, metadata=spec("Seed", minimum=0, maximum=MAX_SEED, step=1))
    randomize_seed: bool = field(default=False, metadata=spec("Random seed"))


@dataclass
class ForecastResult:
    """A forecast (or refinement, or synthesis) with what produced it."""

    parameters: dict
    series: str
    title: str
    labels: list[str]  # timestamps of history + horizon
    history: np.ndarray  # the observed values shown before the origin
    truth: np.ndarray | None  # held-out values (None when forecasting the real future)
    quantiles: dict[str, np.ndarray]  # name -> (9, H), series units; first = the studio's method
    samples: np.ndarray  # (N, H) of the studio's method
    metrics: list[dict]  # rows: method, CRPS, MASE, seconds
    seconds: float
    notes: list[str] = field(default_factory=list)
    before: str | None = None  # refine mode: the base forecaster's name
    synthetic: np.ndarray | None = None  # synthesize mode: (n, L) windows, series units of the last context
    lps: dict | None = None
    partial: bool = False  # True for the first result of a run, before the baselines are in

    @property
    def method(self) -> str:
        return next(iter(self.quantiles))

    def quantiles_csv(self) -> str:
        """Every method's forecast quantiles at each horizon step, with the parameters as a header comment."""
        import json

        horizon_labels = self.labels[-self.samples.shape[1]:] if self.samples.size else []
        head = "# " + json.dumps(self.parameters, default=str) + "\n"
        cols = ["timestamp", "method"] + [f"q{q:.1f}" for q in M.QUANTILES] + (["truth"] if self.truth is not None
                                                                              else [])
        rows = [",".join(cols)]
        for name, qs in self.quantiles.items():
            for h, stamp in enumerate(horizon_labels):
                vals = [f"{v:.6g}" for v in qs[:, h]]
                truth = [f"{self.truth[h]:.6g}"] if self.truth is not None else []
                rows.append(",".join([stamp, name, *vals, *truth]))
        return head + "\n".join(rows) + "\n"


def check(p: Params, manager: ModelManager, upload: S.Series | None = None) -> tuple[S.Series, str, int, int, int]:
    """Validate ``p`` against the series and its model: (series, model key, origin, horizon, context)."""
    validate(p)
    series = resolve_series(p, upload)
    key = upload_key(series) if p.series == "upload" else model_key(series.name)
    if key not in manager:
        raise ParamError("no model for this series yet: press 'Train on my series' first" if p.series == "upload"
                         else f"the zoo model {key!r} is missing; rebuild it with `studio train {key}`")
    info = manager.info(key)
    window, lags = int(info["window"]), tuple(info["lags"])
    horizon = p.horizon or int(info["horizon"])
    if horizon > window // 2:
        raise ParamError(f"Horizon must be at most {window // 2} for this model (its window is {window} points)")
    full = window - horizon
    context = p.context or full
    if context > full:
        raise ParamError(f"Context must be at most {full} with horizon {horizon} (the model's window is {window})")
    if context < 2:
        raise ParamError("Context must be at least 2 points")
    n = len(series.values)
    origin = n - p.holdout * horizon
    if origin - full - max(lags) < 0:
        raise ParamError(f"Forecast origin {p.holdout} horizons before the end leaves too little history; the model "
                         f"needs {full + max(lags)} points before the origin")
    train_end = int(info.get("train_end", n))
    if p.holdout and origin < train_end:
        raise ParamError(f"Forecast origin: the model was trained on the first {train_end} points, so a backtest "
                         f"must start at or after point {train_end} (at most {(n - train_end) // horizon} horizons "
                         "back with this horizon)")
    observed = ~np.isnan(series.values[max(0, origin - context):origin])
    if observed.sum() < 2:
        raise ParamError("the context has fewer than 2 observed values")
    return series, key, origin, horizon, context


def resolve_series(p: Params, upload: S.Series | None = None) -> S.Series:
    if p.series == "upload":
        if upload is None:
            raise ParamError("upload a CSV first (a timestamp column and a value column)")
        return upload
    return S.bundled(p.series)


def _last(items: Iterator) -> Generator[Progress, None, object]:
    """Pass a sampler's Progress items on; return its final item (``x = yield from _last(...)``)."""
    last = None
    for item in items:
        if isinstance(item, Progress):
            yield item
        else:
            last = item
    return last


def _guided(p: Params, model, window: Window, horizon: int, seed: int) -> Generator[Progress, None, np.ndarray]:
    """Forecast mode: TSDiff-Q / -MS samples ``(N, H)``; refused when the sampler diverged."""
    x = yield from _last(observation_guidance(model, [window], num_samples=p.samples, guidance=p.guidance,
                                              scale=p.scale, sampler=p.sampler, steps=p.ddim_steps, seed=seed))
    if not bool(torch.isfinite(x).all()):
        raise ParamError(f"the guided sampler diverged at scale {p.scale:g} ({GUIDANCE_LABELS[p.guidance]}); lower "
                         f"the guidance scale (MS guidance is stable here only up to about {DEFAULT_SCALE['mse']:g})")
    return S.forecast_samples(x, [window], horizon)[0]


def _refined(p: Params, model, window: Window, base: dict, horizon: int, seed: int) -> np.ndarray:
    """Refine mode: the base forecaster's samples after refinement, ``(N, H)``."""
    init = gaussian_samples(base["quantiles"], p.samples)
    refined = refine(model, [window], init[None], refiner=p.refiner, iterations=p.iterations, seed=seed)
    samples = S.forecast_samples(refined, [window], horizon)[0]
    if not np.isfinite(samples).all():
        raise ParamError(f"the refiner diverged ({p.refiner}, {p.iterations} iterations); use fewer iterations")
    return samples


def _scores(rows: list[dict], truth: np.ndarray, quantiles: dict, series: S.Series, origin: int) -> None:
    """Add CRPS and MASE on the held-out ``truth`` (its observed points) to each row."""
    ok = ~np.isnan(truth)
    crps = M.mean_weighted_quantile_loss(truth[ok], {k: v[:, ok] for k, v in quantiles.items()})
    mase = M.mase(truth[ok], {k: v[4, ok] for k, v in quantiles.items()}, S.interpolate(series.values[:origin]),
                  series.season)
    for row in rows:
        row["CRPS"] = round(crps[row["method"]], 5)
        row["MASE"] = round(mase[row["method"]], 4)


def run(p: Params, manager: ModelManager, upload: S.Series | None = None) -> Iterator[Progress | ForecastResult]:
    """Yield Progress per diffusion step, then one :class:`ForecastResult`. With baselines, a last
    Progress comes first whose ``info["partial"]`` is the result without them (the studio's own
    forecast, shown while AutoARIMA fits)."""
    series, key, origin, horizon, context = check(p, manager, upload)
    seed = random_seed() if p.randomize_seed else p.seed
    t0 = time.perf_counter()
    truth = series.values[origin:origin + horizon] if p.holdout else None
    show = min(origin, max(3 * horizon, context))
    labels = series.labels(origin - show, origin + horizon)
    notes = list(series.notes)
    if np.isnan(series.values[max(0, origin - context):origin]).any():
        notes.append("missing values in the context are left unobserved by TSDiff's guidance (it imputes them) and "
                     "interpolated for the baselines" + ("; the refiner starts them interpolated and leaves them out "
                                                         "of its prior" if p.mode == "refine" else ""))
    quantiles: dict[str, np.ndarray] = {}
    metrics: list[dict] = []
    samples = np.zeros((0, horizon))
    synthetic, lps, before, base_seconds = None, None, None, 0.0
    with manager.use(key) as model:
        window = make_window(series.values, origin, model.info["window"], horizon, tuple(model.info["lags"]), context)
        tf = time.perf_counter()
        if p.mode == "forecast":
            name = GUIDANCE_LABELS[p.guidance]
            samples = yield from _guided(p, model, window, horizon, seed)
            quantiles[name] = M.sample_quantiles(samples)
        elif p.mode == "refine":
            base = baseline_forecasts(series.values[:origin], horizon, series.season, (p.base,))[p.base]
            name, before, base_seconds = f"{p.base} + {REFINER_LABELS[p.refiner]} refinement", p.base, base["seconds"]
            samples = _refined(p, model, window, base, horizon, seed)
            quantiles.update({name: M.sample_quantiles(samples), p.base: base["quantiles"]})
        else:
            name = "TSDiff synthetic"
            x = yield from _last(synthesize(model, p.samples, seed=seed, sampler=p.sampler, steps=p.ddim_steps))
            synth = x[..., 0].numpy().astype(np.float64)
        own_seconds = time.perf_counter() - tf
        if p.mode == "refine":
            yield Progress(step=1, total=1, timestep=0.0)
        elif p.mode == "synthesize":
            synthetic, lps = synth * window.scale, synthesis_scores(series, model.info, synth)
    parameters = {"method": "forecast", **asdict(p), "seed": seed, "randomize_seed": False, "model": key,
                  "origin": labels[show] if show < len(labels) else None, "horizon": horizon, "context": context,
                  "studio_version": __version__}

    def result(partial: bool) -> ForecastResult:
        rows = [{"method": name, "seconds": round(own_seconds, 3)}, *metrics]
        if p.mode == "refine":
            rows.insert(1, {"method": p.base, "seconds": round(base_seconds, 3)})
        if truth is not None and p.mode != "synthesize" and not np.isnan(truth).all():
            _scores(rows, truth, quantiles, series, origin)
        return ForecastResult(parameters=parameters, series=series.name, title=series.title, labels=labels,
                              history=series.values[origin - show:origin], truth=truth, quantiles=dict(quantiles),
                              samples=samples, metrics=rows if p.mode != "synthesize" else [],
                              seconds=time.perf_counter() - t0, notes=notes, before=before, synthetic=synthetic,
                              lps=lps, partial=partial)

    if p.mode == "synthesize" or not p.baselines:
        yield result(partial=False)
        return
    # the studio's own forecast first: AutoARIMA can take many seconds
    yield Progress(step=1, total=1, info={"partial": result(partial=True)})
    others = tuple(b for b in BASELINES if not (p.mode == "refine" and b == p.base))  # the base is in already
    fits = baseline_forecasts(series.values[:origin], horizon, series.season, others)
    for bname, b in fits.items():
        quantiles[bname] = b["quantiles"]
        metrics.append({"method": bname, "seconds": round(b["seconds"], 3)})
    reused = [bname for bname, b in fits.items() if b["cached"]]
    if reused:
        notes.append(f"{', '.join(reused)}: reused from an identical earlier fit of this history (the fits are "
                     "deterministic); their seconds are that fit's")
    yield result(partial=False)


# ------------------------------------------------------------------------- train on my series


def upload_setup(series: S.Series, horizon: int, context: int) -> S.Series:
    """The uploaded series with the asked horizon / context (0 = its defaults), the last horizon
    held out as the backtest; refused when the series is too short for them."""
    horizon = horizon or series.horizon
    context = context or series.context
    s = series.with_setup(context=context, horizon=horizon, origins=1)
    need = s.window + s.history + s.horizon
    if len(s.values) < need:
        raise ParamError(f"the series has {len(s.values)} points; context {context} + horizon {horizon} + "
                         f"{s.history} points of lag history + {horizon} held out need at least {need}")
    return s


@dataclass
class TrainedSeries:
    """A model trained on an uploaded series (to register under ``key``), finished or stopped."""

    parameters: dict
    key: str  # upload_key(series): where the caller registers it
    series: S.Series  # the set-up it was trained with (forecast it with upload=series)
    model: SeriesDiffusion  # eval mode
    log: dict  # steps, seconds, windows, final_loss, tau (and stopped when Stop ended it)

    @property
    def stopped(self) -> bool:
        return bool(self.log.get("stopped"))


def train(p: Params, manager: ModelManager, *, stop: Callable[[], bool] = lambda: False,
          upload: S.Series | None = None) -> Iterator[Progress | TrainedSeries]:
    """*Train on my series*: a TSDiff model for ``upload`` with ``p.horizon`` / ``p.context`` (0 =
    the series' defaults), trained on all but the last horizon. Yields a
    :class:`studio.train.forecast.TrainProgress` every 10 steps (loss, seconds, the live model),
    then one :class:`TrainedSeries`; ``stop()`` is polled between steps and, when True, ends the
    training early with the model so far (its tau the default, ``stopped`` True). Registers
    nothing: the caller registers the result (and, if it likes, snapshots on the way)."""
    validate(p)
    if upload is None:
        raise ParamError("upload a CSV first (a timestamp column and a value column)")
    series = upload_setup(upload, p.horizon, p.context)
    trainer = lazy.module("studio.train.forecast")  # imports diffusers: on first use, under the one lock
    steps = trainer.UPLOAD_STEPS
    parameters = {"method": "forecast", "action": "train", "horizon": series.horizon, "context": series.context,
                  "steps": steps, "seed": p.seed, "studio_version": __version__}
    for item in trainer.train_steps(series, steps=steps, seed=p.seed, train_end=series.train_end, report_every=10,
                                    stop=stop):
        if isinstance(item, Progress):
            yield item
        else:
            model, log = item
            yield TrainedSeries(parameters=parameters, key=upload_key(series), series=series, model=model, log=log)
