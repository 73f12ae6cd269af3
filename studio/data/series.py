"""Time series: the bundled statsmodels series, and strict parsing of an uploaded CSV.

Bundled series (all shipped inside statsmodels, so nothing is downloaded):

* ``co2``: Mauna Loa CO2 (ppm), weekly 1958-2001 averaged to **monthly** (the weekly record has
  gaps; a month with no reading is interpolated). Season 12.
* ``elnino``: El Nino sea-surface temperature (deg C), monthly 1950-2010. Season 12.
* ``sunspots``: yearly sunspot activity 1700-2008. Season 11 (the solar cycle).
* ``unemployment``: US unemployment rate (%), quarterly 1959-2009 (macrodata ``unemp``). Season 4.

Each :class:`Series` carries its forecasting set-up: season length, context and horizon, the
seasonal lags the TSDiff model takes as extra channels, and how many rolling forecast origins
the backtest uses (the last ``origins`` horizons of the series; everything before them is the
training split, which is all the zoo model ever saw).

CSV input (:func:`parse_csv`): a timestamp column and a value column. Parsed strictly: a file
over :data:`MAX_CSV_BYTES`, unparseable timestamps, duplicate timestamps, text or infinite
values, a constant or too-short series are refused with a message naming the row. The
timestamps may lie on any regular grid pandas can name (:func:`infer_grid`: 15 or 30 minutes,
hourly, business days, daily, weekly, monthly, quarterly, yearly, and multiples), and the season
length comes from the frequency (:func:`season_of_step`: 96 for 15 minutes, 48 for 30, 24 for
hourly, 5 for business days, 7 for daily, 52 weekly, 12 monthly, 4 quarterly); truly irregular
timestamps are refused, saying which one is off the grid. Empty cells and ``NaN`` are *missing
values*, and so are timestamps absent from the grid (gaps): the series is put on its grid and
the holes are kept as NaN. TSDiff treats them as unobserved (its guidance simply leaves them
out, so it imputes them; the refiner starts them interpolated and leaves them out of its prior);
the statsforecast baselines, which need complete data, get them linearly interpolated. More
than 20% missing is refused.

Forecast windows (:func:`make_window`, :func:`training_windows`, :func:`real_windows`): a
window is ``context + horizon`` points; channel 0 is the series, channels 1.. its seasonal lags
(``x[p, 1 + j] = y[p - lag_j]``), all divided by the mean absolute observed value of the context
(GluonTS ``MeanScaler``), as the official TSDiff code builds its model space.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np
import pandas as pd

from studio import lazy
from studio.errors import UserError

torch = lazy.load("torch")

MAX_CSV_BYTES = 2 * 1024 * 1024
MAX_POINTS = 20_000
MAX_MISSING = 0.2
SEASON_OF_FREQ = {"H": 24, "D": 7, "B": 5, "W": 52, "M": 12, "Q": 4, "Y": 1}


class SeriesError(UserError):
    """A series or CSV that cannot be used; the message is meant for the user."""


@dataclass(frozen=True)
class Series:
    """A univariate series on a regular grid, with its forecasting set-up."""

    name: str
    title: str
    values: np.ndarray  # float64, NaN = missing
    index: pd.DatetimeIndex | pd.PeriodIndex
    freq: str  # the grid: H, D, B, W, M, Q, Y, or a pandas frequency such as '30min'
    season: int
    context: int
    horizon: int
    lags: tuple[int, ...]
    origins: int = 5
    unit: str = ""
    notes: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.values)

    @property
    def window(self) -> int:
        """Context + horizon: the length the diffusion model generates."""
        return self.context + self.horizon

    @property
    def history(self) -> int:
        """Points needed before a window for its lag channels."""
        return max(self.lags, default=0)

    def origin_positions(self) -> list[int]:
        """Backtest forecast origins: index of the first forecast point, last ``origins`` horizons."""
        n = len(self.values)
        return [n - k * self.horizon for k in range(self.origins, 0, -1)]

    @property
    def train_end(self) -> int:
        """End (exclusive) of the training split: the first backtest origin."""
        return self.origin_positions()[0] if self.origins else len(self.values)

    def with_setup(self, context: int | None = None, horizon: int | None = None, origins: int | None = None) -> "Series":
        horizon = horizon or self.horizon
        return replace(self, context=context or self.context, horizon=horizon,
                       lags=lags_for(self.season, horizon), origins=self.origins if origins is None else origins)

    def labels(self, start: int, stop: int) -> list[str]:
        """Timestamps of positions [start, stop) as strings, extended past the end on the grid."""
        idx = self.index
        if stop > len(idx):
            extra = pd.period_range(idx[-1], periods=stop - len(idx) + 1, freq=idx.freq)[1:] \
                if isinstance(idx, pd.PeriodIndex) else \
                pd.date_range(idx[-1], periods=stop - len(idx) + 1, freq=idx.freq)[1:]
            idx = idx.append(extra)
        return [str(v) for v in idx[start:stop]]


def lags_for(season: int, horizon: int) -> tuple[int, ...]:
    """Two seasonal lags, each at least the horizon, so every lag value of a forecast window is
    already observed at the origin (as with the official code's seasonal lag sets)."""
    base = season if season > 1 else horizon
    k = max(1, -(-horizon // base))
    return (base * k, base * (k + 1))


def _setup(name, title, values, index, freq, season, context, horizon, unit, notes=()) -> Series:
    return Series(name=name, title=title, values=np.asarray(values, dtype=np.float64), index=index, freq=freq,
                  season=season, context=context, horizon=horizon, lags=lags_for(season, horizon), unit=unit,
                  notes=tuple(notes))


@lru_cache(maxsize=None)
def bundled(name: str) -> Series:
    """A bundled series by name (see the module docstring)."""
    import statsmodels.api as sm

    if name == "co2":
        weekly = sm.datasets.co2.load_pandas().data["co2"]
        monthly = weekly.resample("MS").mean().interpolate()
        index = monthly.index.to_period("M")
        return _setup("co2", "Mauna Loa CO2 (monthly mean of weekly readings)", monthly.to_numpy(), index, "M",
                      12, 60, 12, "ppm", ["weekly readings averaged to months; months without a reading interpolated"])
    if name == "elnino":
        df = sm.datasets.elnino.load_pandas().data
        values = df.drop(columns="YEAR").to_numpy().reshape(-1)
        index = pd.period_range(f"{int(df.YEAR.iloc[0])}-01", periods=len(values), freq="M")
        return _setup("elnino", "El Nino sea-surface temperature", values, index, "M", 12, 60, 12, "deg C")
    if name == "sunspots":
        df = sm.datasets.sunspots.load_pandas().data
        index = pd.period_range(str(int(df.YEAR.iloc[0])), periods=len(df), freq="Y")
        return _setup("sunspots", "Yearly sunspot activity", df.SUNACTIVITY.to_numpy(), index, "Y", 11, 44, 11,
                      "", ["season 11 = the solar cycle, not a calendar season"])
    if name == "unemployment":
        df = sm.datasets.macrodata.load_pandas().data
        index = pd.period_range(f"{int(df.year.iloc[0])}Q{int(df.quarter.iloc[0])}", periods=len(df), freq="Q")
        return _setup("unemployment", "US unemployment rate (quarterly)", df.unemp.to_numpy(), index, "Q", 4, 32, 8,
                      "%")
    raise SeriesError(f"unknown series {name!r}; bundled: {', '.join(BUNDLED)}")


BUNDLED: tuple[str, ...] = ("co2", "elnino", "sunspots", "unemployment")


# ---------------------------------------------------------------------------------------------- CSV


DAY = pd.Timedelta(days=1)
MAX_SEASON = 144  # the longest season a CSV's frequency gives (10-minute data: 144 steps a day)
# steps a timestamp grid may have when pandas cannot name it (gaps): whole divisors of a minute, an hour or a
# day, or whole days up to a week
NICE_STEPS = tuple(pd.Timedelta(v) for v in (
    "1s", "2s", "5s", "10s", "15s", "20s", "30s", "1min", "2min", "5min", "10min", "15min", "20min", "30min",
    "1h", "2h", "3h", "4h", "6h", "8h", "12h", "1D", "2D", "3D", "4D", "5D", "6D", "7D", "14D"))
_CALENDAR = [(30.4, "M"), (91.3, "Q"), (365.2, "Y")]  # median spacing in days -> period code


def season_of_step(step: pd.Timedelta) -> int:
    """Season length of a fixed step: the steps in a day when the step divides a day into at most
    :data:`MAX_SEASON` (48 for 30 minutes, 96 for 15, 24 for hourly), else in an hour, else in a
    minute; 7 for daily data (the week), 52 // k for k-week steps, 1 (none) otherwise."""
    for cycle in (DAY, pd.Timedelta(hours=1), pd.Timedelta(minutes=1)):
        if step < cycle and cycle % step == pd.Timedelta(0) and cycle // step <= MAX_SEASON:
            return int(cycle // step)
    if step == DAY:
        return 7
    week = pd.Timedelta(days=7)
    if step % week == pd.Timedelta(0) and 52 % (step // week) == 0:
        return int(52 // (step // week))
    return 1


def _season_of_offset(offset) -> int | None:
    """Season length of a pandas offset (None when the studio does not handle that kind of grid)."""
    from pandas.tseries import offsets as O

    n = offset.n
    if isinstance(offset, O.Tick):
        return season_of_step(pd.Timedelta(offset))
    per_year = [((O.MonthBegin, O.MonthEnd, O.BusinessMonthBegin, O.BusinessMonthEnd), 12),
                ((O.SemiMonthBegin, O.SemiMonthEnd), 24), ((O.Week,), 52),
                ((O.QuarterBegin, O.QuarterEnd, O.BQuarterBegin, O.BQuarterEnd), 4),
                ((O.YearBegin, O.YearEnd, O.BYearBegin, O.BYearEnd), 1)]
    if isinstance(offset, O.BusinessDay) and not isinstance(offset, O.CustomBusinessDay):
        return 5 if n == 1 else 1
    for kinds, count in per_year:
        if isinstance(offset, kinds):
            return count // n if count % n == 0 else 1
    return None


def _duration(td: pd.Timedelta) -> str:
    """A spacing in words: '26 min 34 s', '3 days 2 h'."""
    c = td.components
    parts = [(c.days, "day" if c.days == 1 else "days"), (c.hours, "h"), (c.minutes, "min"),
             (c.seconds + (1 if c.milliseconds >= 500 else 0), "s")]
    return " ".join(f"{v} {u}" for v, u in parts if v)[:40] or "0 s"


def _step_name(step: pd.Timedelta) -> str:
    return {pd.Timedelta(hours=1): "hourly", DAY: "daily", pd.Timedelta(days=7): "weekly"}.get(
        step, f"{_duration(step)}")


_PANDAS_FREQ = {"H": "h", "D": "D", "W": "W", "M": "M", "Q": "Q", "Y": "Y"}


@dataclass(frozen=True)
class Grid:
    """Where a CSV's timestamps sit: ``index`` the full regular grid from the first to the last
    timestamp, ``positions`` each row's place on it, ``freq`` its name, ``season`` its season."""

    index: pd.DatetimeIndex | pd.PeriodIndex
    positions: np.ndarray
    freq: str
    season: int


def _period_grid(index: pd.DatetimeIndex, code: str) -> Grid:
    period = index.to_period(_PANDAS_FREQ[code])
    full = pd.period_range(period.min(), period.max(), freq=period.freq)
    return Grid(full, full.get_indexer(period), code, SEASON_OF_FREQ[code])


def _offset_grid(index: pd.DatetimeIndex, offset) -> Grid | None:
    from pandas.tseries import offsets as O

    season = _season_of_offset(offset)
    if season is None:
        return None
    simple = {"h": "H", "D": "D", "W": "W", "M": "M", "Q": "Q", "Y": "Y"}  # as earlier versions named them
    head = offset.rule_code.split("-")[0].rstrip("SE") or offset.rule_code
    if offset.n == 1 and not isinstance(offset, (O.BusinessDay, O.BusinessMonthBegin, O.BusinessMonthEnd,
                                                 O.SemiMonthBegin, O.SemiMonthEnd)) and head in simple:
        return _period_grid(index, simple[head])
    full = pd.date_range(index[0], index[-1], freq=offset)
    return Grid(full, full.get_indexer(index), "B" if isinstance(offset, O.BusinessDay) and offset.n == 1
                else offset.freqstr, season)


def infer_grid(index: pd.DatetimeIndex) -> Grid:
    """The regular grid of sorted, distinct timestamps, or a :class:`SeriesError` that says why not.

    ``pd.infer_freq`` names the grid when no timestamp is missing (any grid pandas knows:
    half-hourly, 15-minute, business days, hourly, daily, weekly, monthly, quarterly, yearly,
    and their multiples). With gaps, the median spacing decides: about a month, a quarter or a
    year puts each timestamp in its calendar period; otherwise the nearest of :data:`NICE_STEPS`
    (within 10%) is the step, and every timestamp must lie on it (within a quarter of a step of
    the grid from the first timestamp); weekdays-only daily data are business days."""
    if len(index) < 3:
        raise SeriesError(f"the file has {len(index)} row{'s' if len(index) != 1 else ''}; a series needs many more")
    inferred = pd.infer_freq(index)
    if inferred is not None:
        grid = _offset_grid(index, pd.tseries.frequencies.to_offset(inferred))
        if grid is None:
            raise SeriesError(f"the timestamps are on a {inferred!r} grid, which the studio does not handle; use a "
                              "fixed step (e.g. 30 minutes, hourly, daily), business days, weeks, months, quarters "
                              "or years")
        return grid
    diffs = pd.Series(index).diff().dropna()
    median = diffs.median()
    days = median / DAY
    for d, code in _CALENDAR:
        if abs(days - d) / d < 0.1:
            grid = _period_grid(index, code)
            if len(set(grid.positions)) < len(index):
                raise SeriesError(f"two rows fall in the same {code} period; one value per period is needed")
            return grid
    step = min(NICE_STEPS, key=lambda s: abs(median - s))
    if abs(median - step) > 0.1 * step:
        raise SeriesError(f"the timestamps are not on a regular grid: their median spacing is {_duration(median)}, "
                          "which is not a regular step (e.g. 15 or 30 minutes, hourly, daily, weekly, monthly, quarterly, "
                          "yearly), and the studio cannot infer one")
    if step == DAY and len(index) >= 10 and not (index.dayofweek >= 5).any() and (diffs == 3 * DAY).any():
        full = pd.bdate_range(index[0].normalize(), index[-1].normalize()) + (index[0] - index[0].normalize())
        full = pd.DatetimeIndex(full, freq="B")
        pos = full.get_indexer(index)
        if (pos >= 0).all():
            return Grid(full, pos, "B", 5)
    offsets = (index - index[0]) / step
    near = np.round(np.asarray(offsets, dtype=np.float64))
    off = np.flatnonzero(np.abs(np.asarray(offsets, dtype=np.float64) - near) > 0.25)
    if len(off):
        others = f" (and {len(off) - 1} other timestamp{'s' if len(off) > 2 else ''})" if len(off) > 1 else ""
        raise SeriesError(f"the timestamps are not on a regular grid: the typical spacing is {_step_name(step)}, "
                          f"but {index[off[0]].strftime('%Y-%m-%d %H:%M:%S')}{others} is off that grid; put every row on one step (missing steps "
                          "may simply be left out)")
    pos = near.astype(np.int64)
    if pos[-1] + 1 > MAX_POINTS:
        raise SeriesError(f"the timestamps span {pos[-1] + 1:,} {_step_name(step)} steps; the limit is {MAX_POINTS:,}")
    if len(set(pos)) < len(pos):
        raise SeriesError(f"two rows fall on the same {_step_name(step)} step; one value per step is needed")
    offset = pd.tseries.frequencies.to_offset(step)
    full = pd.date_range(index[0], periods=int(pos[-1]) + 1, freq=offset)
    freq = {pd.Timedelta(hours=1): "H", DAY: "D", pd.Timedelta(days=7): "W"}.get(step, offset.freqstr)
    return Grid(full, pos, freq, season_of_step(step))


DEFAULT_HORIZON = {"H": 24, "D": 14, "B": 10, "W": 13, "M": 12, "Q": 8, "Y": 6}


def parse_csv(data: bytes | str, name: str = "upload", context: int | None = None, horizon: int | None = None) -> Series:
    """An uploaded CSV as a :class:`Series` (see the module docstring for the rules).

    ``data`` is the file's bytes (or text). Columns: a timestamp column and a numeric value
    column; when there are more, the first column whose header reads like a time (``date``,
    ``time``, ``ds``, ``timestamp``, ``month``, ``year``) and the first other column are used.
    """
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if len(raw) > MAX_CSV_BYTES:
        raise SeriesError(f"the file is {len(raw) / 1e6:.1f} MB; the limit is {MAX_CSV_BYTES / 1e6:.0f} MB")
    if not raw.strip():
        raise SeriesError("the file is empty")
    try:
        df = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise SeriesError(f"could not read the file as CSV ({str(exc).splitlines()[0]})") from None
    if df.shape[1] < 2:
        raise SeriesError("the CSV needs two columns: a timestamp and a value (found "
                          f"{df.shape[1]} column{'s' if df.shape[1] != 1 else ''})")
    if len(df) > MAX_POINTS:
        raise SeriesError(f"the CSV has {len(df):,} rows; the limit is {MAX_POINTS:,}")
    timey = ("date", "time", "ds", "timestamp", "month", "year", "period", "week", "day")
    cols = list(df.columns)
    tcol = next((c for c in cols if str(c).strip().lower() in timey), cols[0])
    vcol = next(c for c in cols if c != tcol)
    stamps = df[tcol].str.strip()
    try:
        times = pd.to_datetime(stamps, errors="raise", format="mixed")
    except (ValueError, TypeError, OverflowError):
        parsed = pd.to_datetime(stamps, errors="coerce", format="mixed")
        bad = int(np.flatnonzero(parsed.isna())[0])
        raise SeriesError(f"row {bad + 2}: timestamp {stamps.iloc[bad]!r} in column {tcol!r} is not a date or "
                          "time (use e.g. 2020-01-31 or 2020-01-31 13:00)") from None
    text = df[vcol].str.strip()
    missing = text.str.lower().isin(["", "nan", "na", "null", "none", "n/a", "-"])
    values = pd.to_numeric(text.where(~missing, None), errors="coerce")
    bad = np.flatnonzero(values.isna().to_numpy() & ~missing.to_numpy())
    if len(bad):
        raise SeriesError(f"row {bad[0] + 2}: {text.iloc[bad[0]]!r} in column {vcol!r} is not a number "
                          f"({len(bad)} such row{'s' if len(bad) > 1 else ''}); leave a cell empty to mark a "
                          "missing value")
    values = values.to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(values[~np.isnan(values)])):
        raise SeriesError(f"column {vcol!r} holds an infinite value; use a finite number or leave it empty")
    notes = []
    order = np.argsort(times.to_numpy(), kind="stable")
    if np.any(np.diff(order) < 0):
        notes.append("rows sorted by timestamp")
    times, values = times.iloc[order].reset_index(drop=True), values[order]
    dup = times.duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise SeriesError(f"timestamp {times.iloc[i]} appears more than once; each time needs one value")
    index = pd.DatetimeIndex(times)
    grid = infer_grid(index)
    full = grid.index
    if len(full) > MAX_POINTS:
        raise SeriesError(f"the timestamps span {len(full):,} steps of the {grid.freq} grid; the limit is "
                          f"{MAX_POINTS:,}")
    series = pd.Series(np.full(len(full), np.nan), index=full)
    series.iloc[grid.positions] = values
    gaps = len(full) - len(index)
    if gaps:
        notes.append(f"{gaps} missing timestamp{'s' if gaps > 1 else ''} on the {grid.freq} grid kept as missing "
                     "values")
    vals = series.to_numpy(dtype=np.float64)
    n_missing = int(np.isnan(vals).sum())
    if n_missing and not gaps:
        notes.append(f"{n_missing} empty/NaN value{'s' if n_missing > 1 else ''} kept as missing")
    if n_missing > MAX_MISSING * len(vals):
        raise SeriesError(f"{n_missing} of {len(vals)} values are missing; at most {MAX_MISSING:.0%} can be")
    observed = vals[~np.isnan(vals)]
    if len(observed) and np.ptp(observed) <= 1e-12 * max(1.0, np.abs(observed).max()):
        raise SeriesError("the series is constant; there is nothing to forecast")
    season = grid.season
    horizon = horizon or DEFAULT_HORIZON.get(grid.freq, max(season, 6))  # other grids: one season ahead
    context = context or 4 * max(horizon, min(season, 52))
    s = _setup(name, f"uploaded series ({vcol})", vals, full, grid.freq, season, context, horizon, "", notes)
    need = s.window + s.history
    if len(vals) < need:
        raise SeriesError(f"the series has {len(vals)} points; context {s.context} + horizon {s.horizon} + "
                          f"{s.history} points of lag history need at least {need}")
    return replace(s, origins=1)


def interpolate(values: np.ndarray) -> np.ndarray:
    """Missing values filled linearly (ends held flat): what the baselines and training see."""
    s = pd.Series(values)
    return s.interpolate(limit_direction="both").to_numpy(dtype=np.float64)


def to_csv(series: Series) -> str:
    """A series as the CSV :func:`parse_csv` reads (timestamp, value)."""
    idx = series.index.to_timestamp() if isinstance(series.index, pd.PeriodIndex) else series.index
    timed = bool((idx != idx.normalize()).any())  # an hourly or finer grid keeps its times
    stamps = [t.strftime("%Y-%m-%d %H:%M:%S" if timed else "%Y-%m-%d") for t in idx]
    vals = ["" if np.isnan(v) else repr(float(v)) for v in series.values]
    return "timestamp,value\n" + "\n".join(f"{t},{v}" for t, v in zip(stamps, vals)) + "\n"


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
        raise SeriesError(f"the forecast origin needs {full + max(lags, default=0)} points of history before it")
    pos = lag_positions(start, window, lags)
    lookback = full + max(lags, default=0) if context == full else context
    padded = np.concatenate([values, np.full(max(0, origin + horizon - len(values)), np.nan)])
    raw = padded[pos]
    observed = (pos >= origin - lookback) & (pos < origin) & ~np.isnan(raw)
    scale = mean_scale(np.where(observed[:, 0], raw[:, 0], np.nan)[:full])
    x = np.where(observed, raw / scale, 0.0)
    return Window(torch.tensor(x, dtype=torch.float32), torch.tensor(observed, dtype=torch.float32), scale, start,
                  origin, context, horizon)


def forecast_samples(x: torch.Tensor, windows: list[Window], horizon: int) -> np.ndarray:
    """``(B, N, H)`` forecasts in series units from model-space samples ``(B, N, L, C)`` of ``windows``."""
    scales = torch.tensor([w.scale for w in windows])[:, None, None]
    return (x[..., -horizon:, 0] * scales).numpy().astype(np.float64)


def training_windows(values: np.ndarray, end: int, window: int, lags: tuple[int, ...], context: int) -> torch.Tensor:
    """Every window (with its lag history) inside ``values[:end]``, gaps interpolated, each mean-scaled
    over its context: ``(M, L, C)``."""
    v = interpolate(values[:end])
    first = max(lags, default=0)
    starts = np.arange(first, end - window + 1)
    if len(starts) < 1:
        raise SeriesError(f"the training part has {end} points; a window of {window} plus {first} of lag history "
                          "does not fit")
    pos = np.stack([lag_positions(s, window, lags) for s in starts])
    raw = v[pos]
    scale = np.abs(raw[:, :context, 0]).mean(1)
    scale = np.where(scale > 1e-10, scale, 1.0)
    return torch.tensor(raw / scale[:, None, None], dtype=torch.float32)


def real_windows(series: Series, info: dict, end: int | None = None, start: int = 0) -> np.ndarray:
    """Real ``(K, L)`` windows of channel 0 (series units) starting in ``[start, end - L]``, gaps
    interpolated; ``info`` is the model's (its ``window``)."""
    L = int(info["window"])
    v = interpolate(series.values)
    end = len(v) if end is None else end
    return np.stack([v[s:s + L] for s in range(start, end - L + 1)]) if end - start >= L else np.zeros((0, L))
