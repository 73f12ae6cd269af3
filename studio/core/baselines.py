"""Classical forecasting baselines from statsforecast, run on the same history as the studio's
forecasters: SeasonalNaive, AutoETS and AutoARIMA, their quantiles read off their Gaussian
prediction intervals (:func:`baseline_forecasts`), and those quantiles turned into sorted
samples (:func:`gaussian_samples`, how a baseline becomes a refiner's starting point).
"""

from __future__ import annotations

import time
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


def baseline_forecasts(history: np.ndarray, horizon: int, season: int,
                       models: tuple[str, ...] = BASELINES) -> dict[str, dict]:
    """statsforecast forecasts of ``history`` (gaps interpolated): per model its ``(9, H)``
    quantiles (from the 20/40/60/80% Gaussian prediction intervals), point forecast, and seconds."""
    import pandas as pd
    from statsforecast import StatsForecast
    from statsforecast import models as sf_models

    y = interpolate(np.asarray(history, dtype=np.float64))
    df = pd.DataFrame({"unique_id": 0, "ds": np.arange(len(y)), "y": y})
    out = {}
    for name in models:
        t0 = time.perf_counter()
        sf = StatsForecast(models=[_model(sf_models, name, season, len(y))], freq=1, n_jobs=1)
        fc = sf.forecast(df=df, h=horizon, level=list(LEVELS))
        rows = [fc[f"{name}-lo-{lv}"] for lv in LEVELS[::-1]] + [fc[name]] + [fc[f"{name}-hi-{lv}"] for lv in LEVELS]
        quant = np.stack([np.asarray(r, dtype=np.float64) for r in rows])
        out[name] = {"quantiles": quant, "point": fc[name].to_numpy(dtype=np.float64),
                     "seconds": time.perf_counter() - t0}
    return out


def gaussian_samples(quantiles: np.ndarray, num_samples: int) -> np.ndarray:
    """``(N, H)`` samples at q_i = i/(N+1) of the Gaussian whose median and 10/90% quantiles are
    those given (how a statsforecast interval forecast becomes a refiner's sorted init)."""
    from scipy.stats import norm

    med = quantiles[4]
    sd = np.maximum((quantiles[8] - quantiles[0]) / (2 * norm.ppf(0.9)), 1e-12)
    z = norm.ppf(np.arange(1, num_samples + 1) / (num_samples + 1))
    return med[None] + z[:, None] * sd[None]
