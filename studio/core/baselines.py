"""Classical forecasting baselines from statsforecast, run on the same history as the studio's
forecasters: SeasonalNaive, AutoETS and AutoARIMA, their quantiles read off their Gaussian
prediction intervals (:func:`baseline_forecasts`), and those quantiles turned into sorted
samples (:func:`gaussian_samples`, how a baseline becomes a refiner's starting point).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from typing import Literal

import numpy as np

from studio.data.series import interpolate

BaseName = Literal["SeasonalNaive", "AutoETS", "AutoARIMA"]
BASELINES: tuple[str, ...] = ("SeasonalNaive", "AutoETS", "AutoARIMA")
LEVELS = (20, 40, 60, 80)  # prediction intervals whose ends are the quantiles 0.1 .. 0.4 and 0.6 .. 0.9


def _seasonal(season: int, n: int) -> int:
    """The season length AutoETS / AutoARIMA get: 1 (none) for long seasons or short histories."""
    return season if 1 < season <= 24 and n > 2 * season else 1


def _model(sf_models, name: str, season: int, n: int):
    """A fresh statsforecast model ``name`` (``sf_models``: the ``statsforecast.models`` module)."""
    if name == "SeasonalNaive":
        return sf_models.SeasonalNaive(season_length=season)
    auto = {"AutoETS": sf_models.AutoETS, "AutoARIMA": sf_models.AutoARIMA}[name]
    return auto(season_length=_seasonal(season, n))


CACHE_SIZE = 64  # fits kept (a few KB each): the Forecast tab re-asks for the same window often
_cache: OrderedDict[tuple, dict] = OrderedDict()
_cache_lock = threading.Lock()


def _cache_key(history: np.ndarray, horizon: int, season: int, name: str) -> tuple:
    """A fit is a deterministic function of the exact history (gaps included), horizon, season and model."""
    return hashlib.sha256(history.tobytes()).hexdigest(), len(history), int(horizon), int(season), name


def baseline_forecasts(history: np.ndarray, horizon: int, season: int,
                       models: tuple[str, ...] = BASELINES, cache: bool = True) -> dict[str, dict]:
    """statsforecast forecasts of ``history`` (gaps interpolated): per model its ``(9, H)``
    quantiles (from the 20/40/60/80% Gaussian prediction intervals), point forecast, and seconds.

    The fits are deterministic, so each (history, horizon, season, model) is fitted once per process and
    kept (the last :data:`CACHE_SIZE`); a kept fit comes back as a copy with ``cached=True`` and the
    ``seconds`` its fit took. Running the three models in threads was measured slower (co2: 8.2 s
    against 6.9 s in turn; AutoARIMA holds the interpreter), so they run in turn."""
    h = np.asarray(history, dtype=np.float64)
    out: dict[str, dict] = {}
    todo = []
    for name in models:
        key = _cache_key(h, horizon, season, name)
        with _cache_lock:
            hit = _cache.get(key) if cache else None
            if hit is not None:
                _cache.move_to_end(key)
        if hit is not None:
            out[name] = {"quantiles": hit["quantiles"].copy(), "point": hit["point"].copy(),
                         "seconds": hit["seconds"], "cached": True}
        else:
            todo.append((name, key))
    if todo:
        import pandas as pd
        from statsforecast import StatsForecast
        from statsforecast import models as sf_models

        y = interpolate(h)
        df = pd.DataFrame({"unique_id": 0, "ds": np.arange(len(y)), "y": y})
        for name, key in todo:
            t0 = time.perf_counter()
            sf = StatsForecast(models=[_model(sf_models, name, season, len(y))], freq=1, n_jobs=1)
            fc = sf.forecast(df=df, h=horizon, level=list(LEVELS))
            rows = [fc[f"{name}-lo-{lv}"] for lv in LEVELS[::-1]] + [fc[name]] + [fc[f"{name}-hi-{lv}"] for lv in LEVELS]
            fit = {"quantiles": np.stack([np.asarray(r, dtype=np.float64) for r in rows]),
                   "point": fc[name].to_numpy(dtype=np.float64), "seconds": time.perf_counter() - t0}
            if cache:
                with _cache_lock:
                    _cache[key] = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in fit.items()}
                    while len(_cache) > CACHE_SIZE:
                        _cache.popitem(last=False)
            out[name] = {**fit, "cached": False}
    return {name: out[name] for name in models}


def gaussian_samples(quantiles: np.ndarray, num_samples: int) -> np.ndarray:
    """``(N, H)`` samples at q_i = i/(N+1) of the Gaussian whose median and 10/90% quantiles are
    those given (how a statsforecast interval forecast becomes a refiner's sorted init)."""
    from scipy.stats import norm

    med = quantiles[4]
    sd = np.maximum((quantiles[8] - quantiles[0]) / (2 * norm.ppf(0.9)), 1e-12)
    z = norm.ppf(np.arange(1, num_samples + 1) / (num_samples + 1))
    return med[None] + z[:, None] * sd[None]
