"""Forecast (TSDiff): metrics against hand computations, strict CSV parsing, windows and lags,
the guided samplers against the official update rules, refinement, synthesis, baselines, and
the method contract on tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from studio.core import baselines as B
from studio.core import metrics as M
from studio.core import series_sampling as SS
from studio.core.device import make_generator
from studio.core.manager import ModelManager
from studio.core.params import ParamError
from studio.core.sampling import Progress, make_scheduler
from studio.data import series as S
from studio.methods import forecast as F
from studio.core.models import SeriesDiffusion
from studio.errors import UserError
from studio.train import forecast as TF
from tests.contract import MethodContract
from studio.nets.tsdiff import BidirectionalS4D, TSDiffNet, tsdiff_scheduler_config


def tiny_model(series: S.Series, seed: int = 0, train_end: int | None = None) -> SeriesDiffusion:
    torch.manual_seed(seed)
    model = TF.build(series, series.train_end if train_end is None else train_end, seed)
    model.unet = TSDiffNet(channels=1 + len(series.lags), hidden=8, blocks=1, step_emb=16, d_state=4)
    model.unet.eval().requires_grad_(False)
    model.info["tau"] = 20
    return model


def tiny_forecast_manager(manager: ModelManager | None = None) -> ModelManager:
    """Tiny random TSDiff models under every bundled series' zoo key."""
    manager = manager or ModelManager(device="cpu")
    for name in S.BUNDLED:
        s = S.bundled(name)
        manager.register(F.model_key(name), lambda s=s: tiny_model(s), info={**tiny_model(s).info})
    return manager


class ZeroEps(torch.nn.Module):
    """A 'denoiser' that predicts no noise: x0_hat = x / sqrt(abar), so every gradient is analytic."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()), requires_grad=False)

    def forward(self, x, t):
        return x * self.w


def zero_model(window: int, lags=(12, 24)) -> SeriesDiffusion:
    return SeriesDiffusion(name="zero", unet=ZeroEps(), scheduler_config=tsdiff_scheduler_config(),
                           info={"window": window, "lags": list(lags), "horizon": 4, "tau": 20})


# ------------------------------------------------------------------------------------ metrics


def test_mean_weighted_quantile_loss_matches_a_hand_computation():
    y = np.array([10.0, 0.0, -4.0, 6.0])
    rng = np.random.default_rng(0)
    qf = np.sort(rng.normal(2, 5, size=(9, 4)), axis=0)
    want = np.mean([2 * np.sum(np.abs((qf[i] - y) * ((y <= qf[i]) - q))) / np.sum(np.abs(y))
                    for i, q in enumerate(M.QUANTILES)])
    got = M.mean_weighted_quantile_loss(y, {"f": qf})["f"]
    assert got == pytest.approx(want, rel=1e-12)
    # a tiny case by pen and paper: y = (1, 2, 3), every quantile (1.5, 2, 2.5): per q the loss is
    # 2 * (0.5 (1 - q) + 0.5 q) / 6 = 1/6, whatever q
    assert M.mean_weighted_quantile_loss([1, 2, 3], {"f": np.tile([1.5, 2, 2.5], (9, 1))})["f"] == pytest.approx(1 / 6)


def test_mean_weighted_quantile_loss_averages_over_series():
    y = np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 9.0]])
    qf = np.stack([np.tile(r + 0.5, (9, 1)) for r in y])
    both = M.mean_weighted_quantile_loss(y, {"f": qf})["f"]
    each = [M.mean_weighted_quantile_loss(y[i], {"f": qf[i]})["f"] for i in range(2)]
    assert both == pytest.approx(np.mean(each))


def test_mase_matches_a_hand_computation():
    history = np.array([1.0, 3.0, 2.0, 5.0, 4.0, 8.0])  # season 2: |2-1|, |5-3|, |4-2|, |8-5| -> mean 2
    y, f = np.array([6.0, 9.0]), np.array([7.0, 6.0])  # MAE 2
    assert M.mase(y, {"f": f}, history, season=2)["f"] == pytest.approx(1.0)
    assert M.mase(y, {"f": f}, history, season=1)["f"] == pytest.approx(2 / (11 / 5))  # |3-1|+|2-3|+|5-2|+|4-5|+|8-4| = 11


# ------------------------------------------------------------------------------------- series


def test_bundled_series_have_their_setup():
    for name in S.BUNDLED:
        s = S.bundled(name)
        assert len(s) > s.window + s.history + s.origins * s.horizon
        assert min(s.lags) >= s.horizon and not np.isnan(s.values).any()
        assert s.origin_positions()[-1] == len(s) - s.horizon and s.train_end == len(s) - s.origins * s.horizon


def _csv(rows: list[tuple[str, str]], header="date,value") -> bytes:
    return (header + "\n" + "\n".join(f"{a},{b}" for a, b in rows) + "\n").encode()


def _monthly(n=120, start="2000-01"):
    stamps = [str(p) + "-01" for p in __import__("pandas").period_range(start, periods=n, freq="M")]
    return [(t, f"{10 + np.sin(i / 12 * 2 * np.pi) + 0.01 * i:.4f}") for i, t in enumerate(stamps)]


def test_parse_csv_reads_a_monthly_series_and_keeps_gaps_as_missing():
    rows = _monthly()
    s = S.parse_csv(_csv(rows))
    assert (s.freq, s.season, len(s), s.horizon) == ("M", 12, 120, 12) and not np.isnan(s.values).any()
    gappy = rows[:50] + rows[53:]  # three months absent
    rows2 = list(gappy)
    rows2[10] = (rows2[10][0], "")  # and one empty cell
    s2 = S.parse_csv(_csv(rows2))
    assert len(s2) == 120 and np.isnan(s2.values).sum() == 4
    assert any("missing timestamp" in n for n in s2.notes)
    shuffled = S.parse_csv(_csv(rows[::-1]))
    np.testing.assert_allclose(shuffled.values, s.values)
    assert "rows sorted by timestamp" in shuffled.notes


@pytest.mark.parametrize("mutate,message", [
    (lambda r: r[:5] + [(r[5][0], "abc")] + r[6:], "row 7: 'abc'"),
    (lambda r: r[:5] + [("not-a-date", r[5][1])] + r[6:], "row 7: timestamp 'not-a-date'"),
    (lambda r: r[:5] + [r[4]] + r[6:], "appears more than once"),
    (lambda r: [(t, "5") for t, _ in r], "constant"),
    (lambda r: r[:20], "need at least"),
    (lambda r: r[:5] + [(r[5][0], "inf")] + r[6:], "infinite"),
    (lambda r: [(t, "" if i % 3 else v) for i, (t, v) in enumerate(r)], "missing"),
])
def test_parse_csv_refuses_bad_input_with_a_clear_message(mutate, message):
    with pytest.raises(S.SeriesError, match=message.replace("(", r"\(")):
        S.parse_csv(_csv(mutate(_monthly())))


def test_parse_csv_refuses_files_that_are_not_a_series():
    with pytest.raises(S.SeriesError, match="limit"):
        S.parse_csv(b"date,value\n" + b"2020-01-01,1\n" * 200_000)
    with pytest.raises(S.SeriesError, match="empty"):
        S.parse_csv(b"   ")
    with pytest.raises(S.SeriesError, match="two columns"):
        S.parse_csv(b"value\n1\n2\n3\n")
    with pytest.raises(S.SeriesError, match="regular grid"):
        S.parse_csv(_csv([("2020-01-01", "1"), ("2020-01-04", "2"), ("2020-03-01", "3"), ("2021-07-01", "4")]))


def test_csv_round_trip_of_a_bundled_series():
    s = S.bundled("unemployment")
    back = S.parse_csv(S.to_csv(s))
    assert back.freq == "Q" and len(back) == len(s)
    np.testing.assert_allclose(back.values, s.values)


def _grid_csv(freq: str, n: int, drop=(), start="2021-01-04 00:00") -> bytes:
    """A CSV on a pandas grid ``freq`` with a daily and a weekly cycle, rows ``drop`` left out."""
    import pandas as pd

    stamps = pd.date_range(start, periods=n, freq=freq)
    hours = (stamps - stamps[0]) / pd.Timedelta(hours=1)
    values = 50 + 10 * np.sin(2 * np.pi * hours / 24) + 3 * np.sin(2 * np.pi * hours / 168)
    keep = np.setdiff1d(np.arange(n), drop)
    return _csv([(str(stamps[i]), f"{values[i]:.3f}") for i in keep], header="timestamp,demand")


@pytest.mark.parametrize("freq,n,season,horizon", [
    ("30min", 14 * 48, 48, 48),  # two weeks of half-hourly electricity demand
    ("15min", 8 * 96, 96, 96),
    ("B", 300, 5, 10),
])
def test_parse_csv_accepts_any_regular_grid_with_the_season_of_its_frequency(freq, n, season, horizon):
    import pandas as pd

    s = S.parse_csv(_grid_csv(freq, n))
    assert (s.season, s.horizon, len(s)) == (season, horizon, n) and not np.isnan(s.values).any()
    assert s.lags[0] >= s.horizon and s.context == 4 * max(horizon, min(season, 52))
    step = pd.tseries.frequencies.to_offset(freq)
    assert pd.Timestamp(s.labels(n, n + 1)[0]) == pd.Timestamp(s.labels(n - 1, n)[0]) + step  # the grid goes on
    # rows missing from the grid (pandas can no longer name it) are kept as missing values on the same grid
    gappy = S.parse_csv(_grid_csv(freq, n, drop=(7, 8, 100)))
    assert (gappy.freq, gappy.season, len(gappy)) == (s.freq, season, n)
    assert np.flatnonzero(np.isnan(gappy.values)).tolist() == [7, 8, 100]
    np.testing.assert_allclose(np.delete(gappy.values, [7, 8, 100]), np.delete(s.values, [7, 8, 100]))


def test_parse_csv_still_refuses_truly_irregular_timestamps_with_a_clear_message():
    import pandas as pd

    rng = np.random.default_rng(0)
    for mean, message in ((100, "1 h 17 min 7 s"), (40, "25 min 59 s")):  # readings at random times
        stamps = pd.Timestamp("2021-01-01") + pd.to_timedelta(np.cumsum(rng.exponential(mean, 600)), unit="min")
        with pytest.raises(S.SeriesError, match="not on a regular grid: their median spacing is " + message):
            S.parse_csv(_csv([(str(t), f"{v:.3f}") for t, v in zip(stamps, rng.normal(size=600))]))
    rows = [(t, v) for t, v in (line.split(",") for line in _grid_csv("30min", 500).decode().splitlines()[1:])]
    rows[200] = ("2021-01-08 04:13:00", rows[200][1])  # one reading off the half-hour grid
    with pytest.raises(S.SeriesError, match="typical spacing is 30 min, but 2021-01-08 04:13:00 is off that grid"):
        S.parse_csv(_csv(rows))


# ------------------------------------------------------------------------------------ windows


def test_window_reads_lags_scales_by_the_context_and_masks_the_future_and_gaps():
    values = np.arange(100, dtype=np.float64) + 1.0
    values[70] = np.nan
    w = S.make_window(values, origin=80, window=24, horizon=6, lags=(6, 12))
    assert w.start == 62 and w.x.shape == (24, 3)
    ctx = values[62:80]
    assert w.scale == pytest.approx(np.nanmean(np.abs(ctx)))
    # channel 0: context observed except the NaN, horizon unobserved; lags >= horizon: all observed
    # but where they read the NaN (point 70 is lag 6 of point 76 and lag 12 of point 82)
    assert w.mask[:, 0].tolist() == [1.0] * 8 + [0.0] + [1.0] * 9 + [0.0] * 6
    assert w.mask[:, 1:].sum() == 2 * 24 - 2 and w.mask[76 - 62, 1] == 0 and w.mask[82 - 62, 2] == 0
    assert w.x[0, 1] * w.scale == pytest.approx(values[62 - 6]) and w.x[5, 2] * w.scale == pytest.approx(values[67 - 12])
    short = S.make_window(values, origin=80, window=24, horizon=6, lags=(6, 12), context=4)
    assert short.mask[:, 0].sum() == 4 and short.mask[:14, 0].sum() == 0


def test_training_windows_are_mean_scaled_and_never_read_past_the_end():
    values = np.arange(60, dtype=np.float64) + 1.0
    w = S.training_windows(values, end=40, window=10, lags=(2, 4), context=8)
    assert w.shape == (40 - 10 - 4 + 1, 10, 3)
    assert w[:, :8, 0].abs().mean(1).numpy() == pytest.approx(np.ones(len(w)), rel=1e-5)
    last = w[-1, :, 0] * torch.tensor(values[30:38]).mean().float()
    assert last[-1].item() == pytest.approx(values[39], rel=1e-5)  # the last point inside the training part


# -------------------------------------------------------------------------------------- guidance


def _reference_ddpm_guidance(model, w, n, guidance, scale, seed):
    """The official DDPMGuidance loop, written out: p_sample, then x += s * var_t * (-grad E) at the same t."""
    sched = make_scheduler("ddpm", model.scheduler_config, variance_type="fixed_small", clip_sample=False)
    sched.set_timesteps(100)
    gen = make_generator(seed)
    x = torch.randn((n, *w.x.shape), generator=gen)
    abar, betas = sched.alphas_cumprod, sched.betas
    obs, mask = w.x.expand(n, -1, -1), w.mask.expand(n, -1, -1)
    q = (torch.arange(n) + 1.0)[:, None, None] / (n + 1)
    for t in sched.timesteps:
        t = int(t)
        x = sched.step(torch.zeros_like(x), t, x, generator=gen).prev_sample
        var = betas[t] * (1 - (abar[t - 1] if t > 0 else torch.tensor(1.0))) / (1 - abar[t])
        x0 = x / abar[t].sqrt()
        e = obs - x0
        dl = -2 * e if guidance == "mse" else -torch.where(e > 0, q, q - 1)  # d loss / d x0
        x = x - scale * var * (dl * mask) / abar[t].sqrt()
    return x


@pytest.mark.parametrize("guidance", ["mse", "quantile"])
def test_ddpm_self_guidance_is_the_official_update(guidance):
    values = 10 + np.sin(np.arange(80) / 3)
    w = S.make_window(values, origin=76, window=16, horizon=4, lags=(4, 8))
    model = zero_model(16, (4, 8))
    *_, x = SS.observation_guidance(model, [w], num_samples=5, guidance=guidance, scale=2.0, seed=3)
    want = _reference_ddpm_guidance(model, w, 5, guidance, 2.0, 3)
    torch.testing.assert_close(x[0], want, rtol=1e-4, atol=1e-4)


def test_ddim_self_guidance_shifts_epsilon_by_s_sqrt_one_minus_abar_grad():
    values = 10 + np.sin(np.arange(80) / 3)
    w = S.make_window(values, origin=76, window=16, horizon=4, lags=(4, 8))
    model = zero_model(16, (4, 8))
    sched = SS.make_schedulers(model)["ddim"]
    sched.set_timesteps(10)
    gen = make_generator(1)
    x = torch.randn((3, *w.x.shape), generator=gen)
    start = x.clone()
    abar = sched.alphas_cumprod
    for t in sched.timesteps:
        t = int(t)
        grad = -2 * (w.x - x / abar[t].sqrt()) * w.mask / abar[t].sqrt()
        x = sched.step(1.5 * (1 - abar[t]).sqrt() * grad, t, x, eta=0.0).prev_sample
    *_, got = SS.observation_guidance(model, [w], num_samples=3, guidance="mse", scale=1.5, sampler="ddim", steps=10,
                                     seed=1)
    torch.testing.assert_close(got[0], x, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(start, x)


def test_ml_refinement_lowers_the_energy_and_keeps_shapes():
    s = S.bundled("elnino")
    model = tiny_model(s)
    w = S.make_window(s.values, s.origin_positions()[-1], s.window, s.horizon, s.lags)
    init = B.gaussian_samples(B.baseline_forecasts(s.values[:w.origin], s.horizon, 12, ("SeasonalNaive",))
                              ["SeasonalNaive"]["quantiles"], 8)
    trace: list[float] = []
    x = SS.refine(model, [w], init[None], refiner="ml", iterations=15, lr=0.01, trace=trace)
    assert x.shape == (1, 8, s.window, 3) and np.mean(trace[-3:]) < trace[0]
    y = SS.refine(model, [w], init[None], refiner="lmc", iterations=3, seed=1)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_refiner_starts_unobserved_entries_interpolated_and_keeps_the_prior_off_them():
    """With no denoising gradient (ZeroEps), only the prior moves the window: a NaN in the context and
    the entries outside a short context must stay at their interpolated start, not be pulled to 0."""
    values = 10 + np.sin(np.arange(100) / 3)
    values[70] = np.nan
    model = zero_model(24, (6, 12))
    init = np.tile(np.linspace(9.0, 11.0, 6), (4, 1))
    w = S.make_window(values, origin=80, window=24, horizon=6, lags=(6, 12))
    x = SS.refine(model, [w], init[None], refiner="ml", iterations=10, lr=0.1)[0]
    gap = 70 - w.start
    want = (values[69] + values[71]) / 2 / w.scale  # the NaN, linearly interpolated
    torch.testing.assert_close(x[:, gap, 0], torch.full((4,), want, dtype=torch.float32))
    assert x[:, gap, 0].min() > 0.9  # the old start (0, pulled to 0) would leave it near 0
    short = S.make_window(values, origin=80, window=24, horizon=6, lags=(6, 12), context=4)
    y = SS.refine(model, [short], init[None], refiner="ml", iterations=10, lr=0.1)[0]
    first = values[76] / short.scale  # the earliest observed point of channel 0, held flat before it
    torch.testing.assert_close(y[:, :14, 0], torch.full((4, 14), first, dtype=torch.float32))
    assert torch.isfinite(y).all() and y[:, :, 1:].min() > 0.8  # lag channels: filled from the series, not 0
    # with the denoising term on, a refiner still never drags the gap toward 0
    tiny = tiny_model(S.bundled("elnino"))
    tiny.info.update(window=24, lags=[6, 12])
    tiny.unet = TSDiffNet(channels=3, hidden=8, blocks=1, step_emb=16, d_state=4).eval().requires_grad_(False)
    z = SS.refine(tiny, [w], init[None], refiner="lmc", iterations=20, seed=0)[0]
    assert (z[:, gap, 0] - want).abs().max() < 0.5 * want


def test_fill_unobserved_interpolates_along_time_and_holds_the_ends():
    x = torch.tensor([[[0.0, 5.0], [2.0, 0.0], [0.0, 0.0], [4.0, 0.0], [0.0, 0.0]]])
    known = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]])
    got = SS.fill_unobserved(x, known)[0]
    assert got[:, 0].tolist() == [2.0, 2.0, 3.0, 4.0, 4.0] and got[:, 1].tolist() == [5.0] * 5


def test_best_diffusion_step_is_a_valid_step():
    s = S.bundled("sunspots")
    model = tiny_model(s)
    windows = S.training_windows(s.values, s.train_end, s.window, s.lags, s.context)[:16]
    tau = TF.best_diffusion_step(model, windows, repeats=1)
    assert 0 <= tau < 100


def test_denoising_loss_noises_x_with_the_schedule_and_sums_the_squared_epsilon_error():
    """With an 'identity' denoiser eps(x_t) = x_t the loss is sum((sqrt(abar) x + (sqrt(1 - abar) - 1) n)^2)."""
    model = zero_model(8)
    model.unet.w.data.fill_(1.0)
    x = torch.randn(3, 8, 3, generator=make_generator(5))
    abar = SS.model_scheduler(model, "ddpm").alphas_cumprod[30]
    noise = torch.randn(x.shape, generator=make_generator(1))
    want = ((abar.sqrt() * x + ((1 - abar).sqrt() - 1) * noise) ** 2).sum()
    torch.testing.assert_close(SS.denoising_loss(model, x, 30, make_generator(1)), want)


def test_s4d_kernel_cache_matches_a_fresh_kernel():
    torch.manual_seed(0)
    layer = BidirectionalS4D(8, 4)
    u = torch.randn(2, 8, 30)
    live = layer(u)
    layer.eval().requires_grad_(False)
    torch.testing.assert_close(layer(u), live)
    torch.testing.assert_close(layer(u), live)  # from the cache
    assert layer._cache is not None and layer._cache[0] == 30
    u2 = torch.randn(2, 8, 30)
    u2[..., 20:] = u[..., 20:]  # bidirectional: a change early reaches late outputs and vice versa
    assert not torch.allclose(layer(u2)[..., 25], layer(u)[..., 25])


# ---------------------------------------------------------------------------------- baselines


def test_baselines_give_ordered_quantiles_and_seasonal_naive_repeats_the_last_season():
    s = S.bundled("unemployment")
    history = s.values[:150]
    out = B.baseline_forecasts(history, 8, 4)
    for name, b in out.items():
        assert b["quantiles"].shape == (9, 8) and np.all(np.diff(b["quantiles"], axis=0) >= -1e-9), name
    np.testing.assert_allclose(out["SeasonalNaive"]["point"], np.tile(history[-4:], 2))
    samples = B.gaussian_samples(out["AutoETS"]["quantiles"], 99)
    assert np.all(np.diff(samples, axis=0) >= 0)
    np.testing.assert_allclose(samples[49], out["AutoETS"]["quantiles"][4], rtol=1e-6)


def test_a_baseline_fit_is_kept_and_handed_out_as_a_copy_and_a_new_history_is_fitted_again():
    s = S.bundled("unemployment")
    history = s.values[:120].copy()
    first = B.baseline_forecasts(history, 6, 4, ("SeasonalNaive", "AutoETS"), cache=True)
    again = B.baseline_forecasts(history.copy(), 6, 4, ("AutoETS", "SeasonalNaive"), cache=True)
    assert list(again) == ["AutoETS", "SeasonalNaive"] and all(b["cached"] for b in again.values())
    for name in first:
        np.testing.assert_array_equal(again[name]["quantiles"], first[name]["quantiles"])
        assert again[name]["seconds"] == first[name]["seconds"]  # the fit's own cost, not the lookup's
    again["AutoETS"]["quantiles"][:] = 0.0  # a caller that writes into its copy changes nothing kept
    third = B.baseline_forecasts(history, 6, 4, ("AutoETS",))
    np.testing.assert_array_equal(third["AutoETS"]["quantiles"], first["AutoETS"]["quantiles"])
    history[-1] += 1.0  # one value changed: a different history, fitted afresh
    assert not B.baseline_forecasts(history, 6, 4, ("AutoETS",))["AutoETS"]["cached"]
    assert not B.baseline_forecasts(history, 6, 4, ("AutoETS",), cache=False)["AutoETS"]["cached"]


# --------------------------------------------------------------------------------- the method


@pytest.fixture
def fm():
    return tiny_forecast_manager()


FAST = {"samples": 8, "sampler": "ddim", "ddim_steps": 3}


@pytest.mark.parametrize("mode", ["forecast", "refine", "synthesize"])
def test_run_every_mode_returns_a_result_with_its_parameters(fm, mode):
    items = list(F.run(F.Params(series="sunspots", mode=mode, seed=7, baselines=mode != "synthesize", **FAST), fm))
    results = [i for i in items if isinstance(i, F.ForecastResult)]
    r = results[-1]
    assert not r.partial and r.parameters["seed"] == 7 and r.parameters["model"] == "tsdiff-sunspots"
    assert r.parameters["mode"] == mode and r.truth is not None and len(r.truth) == 11
    if mode == "synthesize":
        assert r.synthetic.shape == (8, 55) and r.lps["synthetic"] > 0 and r.lps["real"] > 0
        return
    partial = [i.info["partial"] for i in items if isinstance(i, Progress) and "partial" in (i.info or {})]
    assert len(results) == 1 and len(partial) == 1 and partial[0].partial  # the fan chart before the baselines
    assert items.index(results[0]) == len(items) - 1
    methods = [row["method"] for row in r.metrics]
    assert set(B.BASELINES) <= set(methods) and all(np.isfinite(row["CRPS"]) for row in r.metrics)
    assert r.samples.shape == (8, 11)
    csv = r.quantiles_csv()
    assert csv.startswith("# {") and '"seed": 7' in csv.splitlines()[0]
    assert len(csv.splitlines()) == 2 + 11 * len(r.quantiles)


class TestForecastContract(MethodContract):
    """The method contract on tiny random models (baselines off: statsforecast takes seconds)."""

    method_id = "forecast"
    bad = [({"horizon": 40}, "Horizon must be at most"), ({"series": "upload"}, "upload a CSV"),
           ({"holdout": 9}, "Forecast origin")]

    @pytest.fixture
    def manager(self):
        return tiny_forecast_manager()

    def params(self):
        return F.Params(series="sunspots", seed=5, baselines=False, **FAST)

    def output(self, result):
        return result.samples, result.quantiles, [row["CRPS"] for row in result.metrics]


def test_run_forecasts_the_real_future_without_scores(fm):
    *_, r = F.run(F.Params(series="unemployment", holdout=0, baselines=False, **FAST), fm)
    assert r.truth is None and "CRPS" not in r.metrics[0] and r.labels[-1] == "2011Q3"


@pytest.mark.parametrize("change,message", [
    ({"horizon": 40}, "Horizon must be at most"),
    ({"context": 500}, "Context must be at most"),
    ({"holdout": 9}, "Forecast origin"),
    ({"scale": -1.0}, "Guidance scale"),
    ({"samples": 2}, "Samples"),
    ({"series": "nile"}, "Series"),
    ({"series": "upload"}, "upload a CSV"),
])
def test_bad_parameters_are_clear_errors(fm, change, message):
    with pytest.raises(ParamError, match=message):
        list(F.run(F.Params(**{**FAST, **change}), fm))


def test_a_diverging_sampler_is_a_clear_error_not_a_nan_fan_chart():
    s = S.bundled("sunspots")
    manager = ModelManager(device="cpu")
    info = {"window": s.window, "lags": list(s.lags), "horizon": s.horizon, "tau": 20, "train_end": s.train_end}
    model = zero_model(s.window, s.lags)
    model.info.update(info)
    manager.register("tsdiff-sunspots", lambda: model, info=info)
    with pytest.raises(ParamError, match="diverged at scale 50"):
        list(F.run(F.Params(series="sunspots", guidance="mse", scale=50.0, sampler="ddpm", samples=4,
                            baselines=False), manager))


def test_an_uploaded_series_needs_its_own_trained_model(fm):
    s = S.parse_csv(_csv(_monthly(150)))
    with pytest.raises(ParamError, match="Train on my series"):
        list(F.run(F.Params(series="upload", **FAST), fm, upload=s))


def test_training_yields_progress_and_a_model_that_round_trips_through_the_zoo_layout(tmp_path, monkeypatch):
    from studio.core.loading import load_folder

    monkeypatch.setattr(TF, "ARCH", {**TF.ARCH, "hidden": 8, "blocks": 1, "d_state": 4})
    s = S.parse_csv(_csv(_monthly(150))).with_setup(origins=1)
    items = list(TF.train_steps(s, steps=20, report_every=10))
    progress = [i for i in items if isinstance(i, TF.TrainProgress)]
    model, log = items[-1]
    assert [p.step for p in progress] == [10, 20] and log["windows"] == s.train_end - s.window - s.history + 1
    assert 0 <= model.info["tau"] < 100 and model.info["train_end"] == 150 - 12
    snap = TF.snapshot(progress[0].model)
    assert not any(p.requires_grad for p in snap.unet.parameters())
    TF.export(model, tmp_path / "tsdiff-mine")
    back = load_folder(tmp_path / "tsdiff-mine")
    assert isinstance(back, SeriesDiffusion) and back.info["lags"] == [12, 24]
    x, t = torch.randn(2, s.window, 3), torch.tensor([3, 50])
    torch.testing.assert_close(back.eps(x, t), model.eps(x, t))


def test_missing_values_in_the_context_are_imputed_by_tsdiff_and_interpolated_for_the_baselines():
    rows = _monthly(150)
    rows[130] = (rows[130][0], "")
    s = S.parse_csv(_csv(rows)).with_setup(origins=1)
    manager = ModelManager(device="cpu")
    model = tiny_model(s, train_end=s.train_end)
    manager.register(F.upload_key(s), lambda: model, info=dict(model.info))
    *_, r = F.run(F.Params(series="upload", **FAST), manager, upload=s)
    assert np.isfinite(r.samples).all() and any("imputes them" in n for n in r.notes)
    assert {row["method"] for row in r.metrics} >= set(B.BASELINES) and all(np.isfinite(row["CRPS"]) for row in r.metrics)


def test_a_window_before_enough_history_is_a_series_error_the_tabs_show_as_is():
    with pytest.raises(S.SeriesError, match="points of history") as info:
        S.make_window(np.arange(30.0), origin=20, window=24, horizon=6, lags=(6, 12))
    assert isinstance(info.value, UserError)


def test_series_choices_list_the_bundled_series_whose_model_is_registered():
    manager = ModelManager(device="cpu")
    s = S.bundled("co2")
    manager.register(F.model_key("co2"), lambda: tiny_model(s), info=dict(tiny_model(s).info))
    manager.register("tsdiff-unrelated", lambda: None, info={"kind": "diffusion", "domain": "image"})
    assert F.series_choices(manager) == ["co2", "upload"]
    assert F.series_choices(tiny_forecast_manager()) == [*S.BUNDLED, "upload"]


@pytest.fixture
def tiny_arch(monkeypatch):
    monkeypatch.setattr(TF, "ARCH", {**TF.ARCH, "hidden": 8, "blocks": 1, "d_state": 4})
    monkeypatch.setattr(TF, "UPLOAD_STEPS", 30)


def test_train_on_my_series_yields_progress_then_the_model_and_registers_nothing(tiny_arch):
    manager = ModelManager(device="cpu")
    upload = S.parse_csv(_csv(_monthly(150)))
    items = list(F.train(F.Params(series="upload"), manager, upload=upload))
    *progress, result = items
    assert [p.step for p in progress] == [10, 20, 30] and all(p.total == 30 for p in progress)
    assert all(np.isfinite(p.loss) and p.info["loss"] == p.loss for p in progress)
    assert isinstance(result, F.TrainedSeries) and not result.stopped and result.log["steps"] == 30
    assert result.key == F.upload_key(result.series) and result.series.origins == 1
    assert result.parameters["steps"] == 30 and manager.keys() == []
    assert not any(p.requires_grad for p in result.model.unet.parameters())


def test_stop_ends_training_early_and_still_yields_the_model_so_far(tiny_arch):
    upload = S.parse_csv(_csv(_monthly(150)))
    items: list = []
    for item in F.train(F.Params(series="upload", horizon=6), ModelManager(device="cpu"), upload=upload,
                        stop=lambda: len(items) >= 1):  # Stop pressed once the first progress is in
        items.append(item)
    *progress, result = items
    assert len(progress) == 1 and result.stopped and result.log["steps"] == 10
    assert result.model.info["tau"] == TF.DEFAULT_TAU == SS.DEFAULT_TAU and result.series.horizon == 6
    x, t = torch.randn(2, result.series.window, 3), torch.tensor([3, 50])
    assert torch.isfinite(result.model.eps(x, t)).all()


def test_train_on_my_series_refuses_a_missing_upload_and_a_too_short_series():
    with pytest.raises(ParamError, match="upload a CSV first"):
        list(F.train(F.Params(series="upload"), ModelManager(device="cpu")))
    with pytest.raises(ParamError, match="need at least"):
        list(F.train(F.Params(series="upload", horizon=40), ModelManager(device="cpu"),
                     upload=S.parse_csv(_csv(_monthly(150)))))
