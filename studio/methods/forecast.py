"""Forecast: TSDiff (Kollovieh et al., NeurIPS 2023), one *unconditional* diffusion model over
series windows that forecasts, refines and synthesises, compared with statsforecast baselines.

As the official code (amazon-science/unconditional-time-series-diffusion) does it:

* **Model space.** A window is ``context + horizon`` points; channel 0 is the series, channels
  1.. its seasonal lags (``x[p, 1 + j] = y[p - lag_j]``), all divided by the mean absolute
  observed value of the context (GluonTS ``MeanScaler``). The denoiser
  (:class:`studio.nets.tsdiff.TSDiffNet`) predicts epsilon for every channel; T = 100, linear
  beta 1e-4 .. 0.1 (a diffusers ``DDPMScheduler``).
* **Observation self-guidance** (:func:`observation_guidance`). With
  ``x0_hat = (x - sqrt(1 - abar_t) eps(x, t)) / sqrt(abar_t)`` the energy is
  ``E = sum over observed entries of l(x0_hat, y)``: squared error (TSDiff-MS) or the pinball
  loss with quantile ``q_i = i / (N + 1)`` for sample i of N (TSDiff-Q). DDPM: after each
  ancestral step, ``x <- x - s sigma_t^2 grad_x E(x, t)`` with the *same* t, sigma_t^2 the
  posterior variance; DDIM: ``eps <- eps + s sqrt(1 - abar_t) grad_x E``. Observed entries are
  the context and every lag value whose source lies before the origin; missing values (NaN)
  are simply unobserved, so the model imputes them.
* **Refinement** (:func:`refine`) of a base forecaster's samples, sorted so sample i is its
  quantile q_i: energy = the sum-reduced epsilon-MSE at one fixed step tau (the step whose
  training loss is nearest the mean over steps, chosen when the model is trained) + a prior,
  the pinball loss against the base forecast written into the window (``quantile``, the
  default) or the squared error on observed entries (``mse``); maximum likelihood (SGD, lr
  0.1) or Langevin ``y <- y - eta grad E + sqrt(2 eta) 0.1 xi`` (eta 0.1), 20 iterations.
* **Synthesis** (:func:`synthesize`) and the Linear Predictive Score (:func:`linear_predictive_score`):
  a ridge model from context to horizon fit on synthetic windows, scored on real windows.

Metrics: mean weighted quantile loss over q = 0.1..0.9 ("CRPS"; utilsforecast ``scaled_crps``)
and MASE, see :mod:`studio.core.metrics`. Baselines: statsforecast SeasonalNaive, AutoETS,
AutoARIMA on the same history, their quantiles read off their Gaussian prediction intervals.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from typing import Iterator, Literal

import numpy as np
import torch

from studio import __version__
from studio.core import metrics as M
from studio.core.device import MAX_SEED, make_generator, random_seed
from studio.core.manager import ModelManager
from studio.core.params import ParamError, spec, validate
from studio.core.sampling import Progress, make_scheduler, sample
from studio.data import series as S

Guidance = Literal["quantile", "mse"]
Mode = Literal["forecast", "refine", "synthesize"]
BaseName = Literal["SeasonalNaive", "AutoETS", "AutoARIMA"]
BASELINES: tuple[str, ...] = ("SeasonalNaive", "AutoETS", "AutoARIMA")
GUIDANCE_LABELS = {"quantile": "TSDiff-Q", "mse": "TSDiff-MS"}
REFINER_LABELS = {"ml": "ML", "lmc": "LMC"}
SERIES_CHOICES: tuple[str, ...] = (*S.BUNDLED, "upload")
# the paper's per-dataset scales run 1 .. 8; MS guidance diverges above ~1 on these small models
# (benchmarks/results/forecast.md: the validation sweeps)
DEFAULT_SCALE = {"quantile": 4.0, "mse": 1.0}


def model_key(series_name: str) -> str:
    return f"tsdiff-{series_name}"


def upload_key(series: S.Series) -> str:
    """Manager key of a model trained on an uploaded series: a hash of its data and set-up,
    never a user string."""
    h = hashlib.sha256(np.nan_to_num(series.values, nan=np.pi).tobytes())
    h.update(f"{series.freq}|{series.context}|{series.horizon}|{series.lags}".encode())
    return f"tsdiff-upload-{h.hexdigest()[:12]}"


# ------------------------------------------------------------------------------------ windows


@dataclass
class Window:
    """One forecast problem in model space: observation, mask, scale, and where it sits."""

    x: torch.Tensor  # (L, C) scaled values, 0 where unobserved
    mask: torch.Tensor  # (L, C) 1 = observed
    scale: float
    start: int  # series position of the window's first point
    origin: int  # series position of the first forecast point
    context: int
    horizon: int


def lag_positions(start: int, length: int, lags: tuple[int, ...]) -> np.ndarray:
    """``(L, C)`` series positions each model-space entry reads: the point itself, then its lags."""
    pos = np.arange(start, start + length)
    return np.stack([pos, *[pos - lag for lag in lags]], axis=1)


def mean_scale(values: np.ndarray) -> float:
    """GluonTS MeanScaler: mean absolute observed value (1 when all are zero)."""
    v = np.abs(values[~np.isnan(values)])
    s = float(v.mean()) if v.size else 0.0
    return s if s > 1e-10 else 1.0


def make_window(values: np.ndarray, origin: int, window: int, horizon: int, lags: tuple[int, ...],
                context: int | None = None) -> Window:
    """The window ending ``horizon`` points after ``origin``; entries whose source lies in
    ``[origin - lookback, origin)`` and is not NaN are observed, where the lookback is the full
    window context plus the lag history, or only ``context`` points when a shorter context is asked."""
    full = window - horizon
    context = full if context is None else context
    start = origin - full
    if start - max(lags, default=0) < 0:
        raise ParamError(f"the forecast origin needs {full + max(lags, default=0)} points of history before it")
    pos = lag_positions(start, window, lags)
    lookback = full + max(lags, default=0) if context == full else context
    padded = np.concatenate([values, np.full(max(0, origin + horizon - len(values)), np.nan)])
    raw = padded[pos]
    observed = (pos >= origin - lookback) & (pos < origin) & ~np.isnan(raw)
    scale = mean_scale(np.where(observed[:, 0], raw[:, 0], np.nan)[:full])
    x = np.where(observed, raw / scale, 0.0)
    return Window(torch.tensor(x, dtype=torch.float32), torch.tensor(observed, dtype=torch.float32), scale, start,
                  origin, context, horizon)


def training_windows(values: np.ndarray, end: int, window: int, lags: tuple[int, ...], context: int) -> torch.Tensor:
    """Every window (with its lag history) inside ``values[:end]``, gaps interpolated, each mean-scaled
    over its context: ``(M, L, C)``."""
    v = S.interpolate(values[:end])
    first = max(lags, default=0)
    starts = np.arange(first, end - window + 1)
    if len(starts) < 1:
        raise ParamError(f"the training part has {end} points; a window of {window} plus {first} of lag history "
                         "does not fit")
    pos = np.stack([lag_positions(s, window, lags) for s in starts])
    raw = v[pos]
    scale = np.abs(raw[:, :context, 0]).mean(1)
    scale = np.where(scale > 1e-10, scale, 1.0)
    return torch.tensor(raw / scale[:, None, None], dtype=torch.float32)


# --------------------------------------------------------------------------------- guidance


def quantile_levels(num_samples: int, batch: int = 1) -> torch.Tensor:
    """``q_i = i / (N + 1)`` for sample i of N, repeated per series: ``(batch * N, 1, 1)``."""
    q = torch.arange(1, num_samples + 1, dtype=torch.float32) / (num_samples + 1)
    return q.repeat(batch)[:, None, None]


def pinball(pred: torch.Tensor, target: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    e = target - pred
    return torch.maximum(q * e, (q - 1) * e)


def observation_energy(x0: torch.Tensor, obs: torch.Tensor, mask: torch.Tensor, guidance: str,
                       q: torch.Tensor | None) -> torch.Tensor:
    """``E = sum_{observed} l(x0_hat, y)``: squared error (MS) or the pinball loss at q_i (Q)."""
    loss = (x0 - obs) ** 2 if guidance == "mse" else pinball(x0, obs, q)
    return (loss * mask).sum()


SCHEDULER_OPTIONS = {"ddpm": {"variance_type": "fixed_small", "clip_sample": False},  # ancestral, posterior var.
                     "ddim": {"clip_sample": False, "set_alpha_to_one": True}}  # eta 0, final alpha 1


def make_schedulers(model) -> dict:
    """The model's DDPM (ancestral, posterior variance) and DDIM (eta 0, final alpha 1) schedulers."""
    return {name: model_scheduler(model, name) for name in SCHEDULER_OPTIONS}


def model_scheduler(model, sampler: str):
    """One of :func:`make_schedulers`' schedulers, built alone."""
    return make_scheduler(sampler, model.scheduler_config, **SCHEDULER_OPTIONS[sampler])


def alphas_cumprod(model) -> torch.Tensor:
    """The model's abar_t, t = 0 .. T - 1 (float32)."""
    return model_scheduler(model, "ddpm").alphas_cumprod.float()


def observation_guidance(model, windows: list[Window], *, num_samples: int, guidance: str = "quantile",
                         scale: float = DEFAULT_SCALE["quantile"], sampler: str = "ddpm", steps: int | None = None,
                         seed: int = 0) -> Iterator[Progress | torch.Tensor]:
    """TSDiff-MS / TSDiff-Q forecasts of every window (see the module docstring).

    Yields a Progress per step, then the samples ``(len(windows), num_samples, L, C)`` in model
    space (multiply by each window's scale for the series' units).
    """
    sched = model_scheduler(model, sampler)
    T = sched.config.num_train_timesteps
    obs = torch.stack([w.x for w in windows]).repeat_interleave(num_samples, 0)
    mask = torch.stack([w.mask for w in windows]).repeat_interleave(num_samples, 0)
    q = quantile_levels(num_samples, len(windows)) if guidance == "quantile" else None
    abar = sched.alphas_cumprod.float()
    betas = sched.betas.float()
    posterior_var = betas * (1 - torch.cat([torch.ones(1), abar[:-1]])) / (1 - abar)
    eps_fn = model.eps

    def eps_and_grad(x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """epsilon(x, t) and grad_x E(x0_hat(x, t)) from one forward and backward pass."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            eps = eps_fn(x, torch.full((x.shape[0],), t))
            x0 = (x - (1 - abar[t]).sqrt() * eps) / abar[t].sqrt()
            grad = torch.autograd.grad(observation_energy(x0, obs, mask, guidance, q), x)[0]
        return eps.detach(), grad

    def plain_eps(x, t):
        with torch.no_grad():
            return eps_fn(x, torch.full((x.shape[0],), int(t)))

    if sampler == "ddim":
        def denoise(x, t):
            if not scale:
                return plain_eps(x, t)
            eps, grad = eps_and_grad(x, int(t))
            return eps + scale * (1 - abar[int(t)]).sqrt() * grad
        correct = None
    else:
        denoise = plain_eps

        def correct(x, t):  # after p_sample, at the same t (as the official DDPM guidance)
            t = int(t)
            return x - scale * posterior_var[t] * eps_and_grad(x, t)[1] if scale else x

    n_steps = T if sampler == "ddpm" else (steps or T)
    shape = (len(windows) * num_samples, *windows[0].x.shape)
    with torch.no_grad():
        for item in sample(denoise, sched, shape, num_inference_steps=n_steps, generator=make_generator(seed),
                           correct=correct):
            if isinstance(item, Progress):
                yield item
            else:
                yield item.reshape(len(windows), num_samples, *windows[0].x.shape)


# ------------------------------------------------------------------------------- refinement


def denoising_loss(model, x: torch.Tensor, tau: int, generator: torch.Generator,
                   abars: torch.Tensor | None = None) -> torch.Tensor:
    """Sum-reduced epsilon-MSE at step tau with fresh noise (the official ``p_losses``); pass the
    model's ``abars`` (:func:`alphas_cumprod`) when calling it in a loop."""
    abar = (alphas_cumprod(model) if abars is None else abars)[tau]
    noise = torch.randn(x.shape, generator=generator)
    xt = abar.sqrt() * x + (1 - abar).sqrt() * noise
    return ((model.eps(xt, torch.full((x.shape[0],), tau)) - noise) ** 2).sum()


def refine(model, windows: list[Window], init: np.ndarray, *, refiner: str = "lmc", iterations: int = 20,
           tau: int | None = None, prior: str = "quantile", lr: float = 0.1, step_size: float = 0.1,
           noise_scale: float = 0.1, seed: int = 0, trace: list | None = None) -> torch.Tensor:
    """Refine base-forecaster samples ``init`` ``(B, N, H)`` (series units) for each window.

    Returns ``(B, N, L, C)`` in model space. ``trace``, when a list, receives the energy at each
    iteration (the notebook's plot).
    """
    tau = int(model.info.get("tau", 20) if tau is None else tau)
    B, N, H = init.shape
    obs = torch.stack([w.x for w in windows]).repeat_interleave(N, 0).clone()
    mask = torch.stack([w.mask for w in windows]).repeat_interleave(N, 0)
    scales = torch.tensor([w.scale for w in windows], dtype=torch.float32).repeat_interleave(N)
    sorted_init = torch.tensor(np.sort(init, axis=1), dtype=torch.float32).reshape(B * N, H)
    obs[:, -H:, 0] = sorted_init / scales[:, None]
    q = quantile_levels(N, B)
    gen = make_generator(seed)

    def prior_energy(x):
        if prior == "mse":
            return (((x - obs) ** 2) * mask).sum()
        return pinball(x, obs, q).sum()

    abars = alphas_cumprod(model)

    def energy(x):
        return denoising_loss(model, x, tau, gen, abars) + prior_energy(x)

    x = obs.clone()
    with torch.enable_grad():
        if refiner == "ml":
            x.requires_grad_(True)
            opt = torch.optim.SGD([x], lr=lr)
            for _ in range(iterations):
                opt.zero_grad()
                e = energy(x)
                e.backward()
                opt.step()
                if trace is not None:
                    trace.append(e.item())
        else:
            for _ in range(iterations):
                x = x.detach().requires_grad_(True)
                e = energy(x)
                g = torch.autograd.grad(e, x)[0]
                x = x - step_size * g + (2 * step_size) ** 0.5 * noise_scale * torch.randn(x.shape, generator=gen)
                if trace is not None:
                    trace.append(e.item())
    return x.detach().reshape(B, N, *obs.shape[1:])


def best_diffusion_step(model, windows: torch.Tensor, seed: int = 0, repeats: int = 2) -> int:
    """The step whose mean denoising loss over ``windows`` is nearest the mean over all steps
    (the official ``get_best_diffusion_step``): the refiners' fixed tau."""
    gen = make_generator(seed)
    T = model.scheduler_config["num_train_timesteps"]
    abars = alphas_cumprod(model)
    with torch.no_grad():
        losses = np.array([np.mean([float(denoising_loss(model, windows, t, gen, abars)) for _ in range(repeats)])
                           for t in range(T)])
    return int(np.argmin(np.abs(losses - losses.mean())))


# -------------------------------------------------------------------------------- synthesis


def synthesize(model, n: int, *, seed: int = 0, sampler: str = "ddpm", steps: int | None = None
               ) -> Iterator[Progress | torch.Tensor]:
    """Unconditional windows ``(n, L, C)`` in model space (mean-scaled units)."""
    sched = model_scheduler(model, sampler)
    L, C = model.info["window"], 1 + len(model.info["lags"])

    def denoise(x, t):
        return model.eps(x, torch.full((x.shape[0],), int(t)))

    with torch.no_grad():
        yield from sample(denoise, sched, (n, L, C), num_inference_steps=steps or sched.config.num_train_timesteps,
                          generator=make_generator(seed))


def linear_predictive_score(train_windows: np.ndarray, test_windows: np.ndarray, context: int,
                            alpha: float = 1.0) -> float:
    """LPS: a ridge model from context to horizon fit on ``train_windows`` ``(M, L)`` (model space,
    e.g. synthetic), scored by mean wQuantileLoss of its point forecast on real ``test_windows``
    ``(K, L)`` in series units, each scaled by its own context mean before the ridge model sees it."""
    from sklearn.linear_model import Ridge

    ridge = Ridge(alpha=alpha).fit(train_windows[:, :context], train_windows[:, context:])
    scale = np.abs(test_windows[:, :context]).mean(1, keepdims=True)
    scale = np.where(scale > 1e-10, scale, 1.0)
    pred = ridge.predict(test_windows[:, :context] / scale) * scale
    y = test_windows[:, context:]
    point = np.repeat(pred[:, None, :], len(M.QUANTILES), axis=1)  # a point forecast: every quantile equal
    return M.mean_weighted_quantile_loss(y, {"lps": point})["lps"]


# -------------------------------------------------------------------------------- baselines


def baseline_forecasts(history: np.ndarray, horizon: int, season: int,
                       models: tuple[str, ...] = BASELINES) -> dict[str, dict]:
    """statsforecast forecasts of ``history`` (gaps interpolated): per model its ``(9, H)``
    quantiles (from the 20/40/60/80% Gaussian prediction intervals), point forecast, and seconds."""
    import pandas as pd
    from statsforecast import StatsForecast
    from statsforecast.models import AutoARIMA, AutoETS, SeasonalNaive

    y = S.interpolate(np.asarray(history, dtype=np.float64))
    df = pd.DataFrame({"unique_id": 0, "ds": np.arange(len(y)), "y": y})
    make = {"SeasonalNaive": lambda: SeasonalNaive(season_length=season),
            "AutoETS": lambda: AutoETS(season_length=season if 1 < season <= 24 and len(y) > 2 * season else 1),
            "AutoARIMA": lambda: AutoARIMA(season_length=season if 1 < season <= 24 and len(y) > 2 * season else 1)}
    out = {}
    for name in models:
        t0 = time.perf_counter()
        sf = StatsForecast(models=[make[name]()], freq=1, n_jobs=1)
        fc = sf.forecast(df=df, h=horizon, level=[20, 40, 60, 80])
        point = fc[name].to_numpy(dtype=np.float64)
        rows = [fc[f"{name}-lo-{lv}"] for lv in (80, 60, 40, 20)] + [fc[name]] + \
               [fc[f"{name}-hi-{lv}"] for lv in (20, 40, 60, 80)]
        quant = np.stack([np.asarray(r, dtype=np.float64) for r in rows])
        out[name] = {"quantiles": quant, "point": point, "seconds": time.perf_counter() - t0}
    return out


def gaussian_samples(quantiles: np.ndarray, num_samples: int) -> np.ndarray:
    """``(N, H)`` samples at q_i = i/(N+1) of the Gaussian whose median and 10/90% quantiles are
    those given (how a statsforecast interval forecast becomes a refiner's sorted init)."""
    from scipy.stats import norm

    med = quantiles[4]
    sd = np.maximum((quantiles[8] - quantiles[0]) / (2 * norm.ppf(0.9)), 1e-12)
    z = norm.ppf(np.arange(1, num_samples + 1) / (num_samples + 1))
    return med[None] + z[:, None] * sd[None]


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
    ddim_steps: int = field(default=25, metadata=spec("DDIM steps", minimum=2, maximum=100, step=1, advanced=True))
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


def resolve_series(p: Params, upload: S.Series | None = None) -> S.Series:
    if p.series == "upload":
        if upload is None:
            raise ParamError("upload a CSV first (a timestamp column and a value column)")
        return upload
    return S.bundled(p.series)


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


def _window_samples(x: torch.Tensor, windows: list[Window], horizon: int) -> np.ndarray:
    """``(B, N, H)`` series-unit forecasts from model-space samples ``(B, N, L, C)``."""
    scales = torch.tensor([w.scale for w in windows])[:, None, None]
    return (x[..., -horizon:, 0] * scales).numpy().astype(np.float64)


def run(p: Params, manager: ModelManager, upload: S.Series | None = None) -> Iterator[Progress | ForecastResult]:
    """Yield Progress per diffusion step, then a :class:`ForecastResult`; with baselines, first a
    ``partial`` result holding the studio's own forecast, then the full one (take the last item)."""
    series, key, origin, horizon, context = check(p, manager, upload)
    seed = random_seed() if p.randomize_seed else p.seed
    t0 = time.perf_counter()
    truth = series.values[origin:origin + horizon] if p.holdout else None
    show = min(origin, max(3 * horizon, context))
    labels = series.labels(origin - show, origin + horizon)
    history = series.values[origin - show:origin]
    notes = list(series.notes)
    if np.isnan(series.values[max(0, origin - context):origin]).any():
        notes.append("missing values in the context are left unobserved by TSDiff's guidance (it imputes them) and "
                     "interpolated for the baselines")
    quantiles: dict[str, np.ndarray] = {}
    metrics: list[dict] = []
    result_samples = np.zeros((0, horizon))
    synthetic, lps, before, base_seconds, name = None, None, None, 0.0, ""
    with manager.use(key) as model:
        window = make_window(series.values, origin, model.info["window"], horizon, tuple(model.info["lags"]), context)
        if p.mode == "forecast":
            name = GUIDANCE_LABELS[p.guidance]
            tf = time.perf_counter()
            for item in observation_guidance(model, [window], num_samples=p.samples, guidance=p.guidance,
                                             scale=p.scale, sampler=p.sampler, steps=p.ddim_steps, seed=seed):
                if isinstance(item, Progress):
                    yield item
                else:
                    result_samples = _window_samples(item, [window], horizon)[0]
                    finite = bool(torch.isfinite(item).all())
            if not finite:
                raise ParamError(f"the guided sampler diverged at scale {p.scale:g} ({name}); lower the guidance "
                                 f"scale (MS guidance is stable here only up to about {DEFAULT_SCALE['mse']:g})")
            quantiles[name] = M.sample_quantiles(result_samples)
            own_seconds = time.perf_counter() - tf
        elif p.mode == "refine":
            tf = time.perf_counter()
            base = baseline_forecasts(series.values[:origin], horizon, series.season, (p.base,))[p.base]
            base_seconds = base["seconds"]
            init = gaussian_samples(base["quantiles"], p.samples)
            name = f"{p.base} + {REFINER_LABELS[p.refiner]} refinement"
            refined = refine(model, [window], init[None], refiner=p.refiner, iterations=p.iterations, seed=seed)
            result_samples = _window_samples(refined, [window], horizon)[0]
            if not np.isfinite(result_samples).all():
                raise ParamError(f"the refiner diverged ({p.refiner}, {p.iterations} iterations); use fewer iterations")
            quantiles[name] = M.sample_quantiles(result_samples)
            quantiles[p.base] = base["quantiles"]
            before = p.base
            own_seconds = time.perf_counter() - tf
            yield Progress(step=1, total=1, timestep=0.0)
        else:
            tf = time.perf_counter()
            for item in synthesize(model, p.samples, seed=seed, sampler=p.sampler, steps=p.ddim_steps):
                if isinstance(item, Progress):
                    yield item
                else:
                    synth = item[..., 0].numpy().astype(np.float64)
            own_seconds = time.perf_counter() - tf
            name = "TSDiff synthetic"
            synthetic = synth * window.scale
            lps = synthesis_scores(series, model.info, synth)
    parameters = {"method": "forecast", **asdict(p), "seed": seed, "randomize_seed": False, "model": key,
                  "origin": labels[show] if show < len(labels) else None, "horizon": horizon, "context": context,
                  "studio_version": __version__}

    def result(partial: bool) -> ForecastResult:
        rows = [{"method": name, "seconds": round(own_seconds, 3)}, *metrics]
        if p.mode == "refine":
            rows.insert(1, {"method": p.base, "seconds": round(base_seconds, 3)})
        if truth is not None and p.mode != "synthesize" and not np.isnan(truth).all():
            ok = ~np.isnan(truth)
            crps = M.mean_weighted_quantile_loss(truth[ok], {k: v[:, ok] for k, v in quantiles.items()})
            mase = M.mase(truth[ok], {k: v[4, ok] for k, v in quantiles.items()},
                          S.interpolate(series.values[:origin]), series.season)
            for row in rows:
                row["CRPS"] = round(crps[row["method"]], 5)
                row["MASE"] = round(mase[row["method"]], 4)
        return ForecastResult(parameters=parameters, series=series.name, title=series.title, labels=labels,
                              history=history, truth=truth, quantiles=dict(quantiles), samples=result_samples,
                              metrics=rows if p.mode != "synthesize" else [], seconds=time.perf_counter() - t0,
                              notes=notes, before=before, synthetic=synthetic, lps=lps, partial=partial)

    if p.mode == "synthesize" or not p.baselines:
        yield result(partial=False)
        return
    yield result(partial=True)  # the studio's own forecast first: AutoARIMA can take many seconds
    others = tuple(b for b in BASELINES if not (p.mode == "refine" and b == p.base))  # the base is in already
    for bname, b in baseline_forecasts(series.values[:origin], horizon, series.season, others).items():
        quantiles[bname] = b["quantiles"]
        metrics.append({"method": bname, "seconds": round(b["seconds"], 3)})
    yield result(partial=False)


def real_windows(series: S.Series, info: dict, end: int | None = None, start: int = 0) -> np.ndarray:
    """Real ``(K, L)`` windows of channel 0 (series units) starting in ``[start, end - L]``, gaps interpolated."""
    L = int(info["window"])
    v = S.interpolate(series.values)
    end = len(v) if end is None else end
    return np.stack([v[s:s + L] for s in range(start, end - L + 1)]) if end - start >= L else np.zeros((0, L))


def synthesis_scores(series: S.Series, info: dict, synthetic: np.ndarray) -> dict:
    """LPS of ridge models fit on synthetic windows vs on real training windows (TRTR), both
    scored on the real windows that end in the backtest part of the series."""
    context = int(info["window"]) - int(info["horizon"])
    train_end = int(info.get("train_end", series.train_end))
    test = real_windows(series, info, start=max(0, train_end - context))
    if not len(test):
        return {"note": "no held-out windows to score on"}
    real_train = real_windows(series, info, end=train_end)
    scale = np.abs(real_train[:, :context]).mean(1, keepdims=True)
    real_train = real_train / np.where(scale > 1e-10, scale, 1.0)
    return {"synthetic": linear_predictive_score(synthetic, test, context),
            "real": linear_predictive_score(real_train, test, context) if len(real_train) else None,
            "test_windows": len(test), "synthetic_windows": len(synthetic)}

