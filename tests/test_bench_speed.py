"""The quality-per-second rules of ``benchmarks/bench_speed_defaults.py`` (issue 29): what counts as
"inside the default's intervals", what the paired test admits, and which settings compete."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_speed_defaults as B  # noqa: E402


def _row(judge: float, low: float, fd: float, fd_high: float, nfe: int = 10) -> dict:
    return {"setting": {}, "nfe": nfe, "class": {"value": judge, "low": low, "high": 1.0},
            "fd": {"value": fd, "low": fd / 2, "high": fd_high}, "seconds_per_image_sweep": 0.1}


def test_inside_means_every_judge_reading_at_least_the_lower_bound_and_fd_at_most_the_upper_bound():
    ref = _row(0.98, 0.96, 20.0, 35.0)
    assert B.inside(_row(0.96, 0.9, 35.0, 60.0), ref)          # on both bounds
    assert not B.inside(_row(0.955, 0.9, 20.0, 30.0), ref)     # a judge reading below the lower bound
    assert not B.inside(_row(0.99, 0.98, 35.5, 40.0), ref)     # FD above the upper bound
    two = {**_row(1.0, 1.0, 20.0, 35.0), "region": {"value": 0.99, "low": 0.98, "high": 1.0}}
    assert not B.inside(_row(1.0, 1.0, 20.0, 30.0) | {"region": {"value": 0.97, "low": 0.9, "high": 1.0}}, two)


def _diff(judge_high: float, fd_low: float) -> dict:
    return {"class": {"value": judge_high - 0.01, "low": judge_high - 0.02, "high": judge_high},
            "fd": {"value": fd_low + 2, "low": fd_low, "high": fd_low + 4}}


def test_the_paired_test_admits_a_setting_unless_a_difference_says_worse_and_the_adopted_rule_is_it_alone():
    assert B.paired_not_worse(_diff(0.0, 0.0)) and B.paired_not_worse(_diff(0.01, -3.0))
    assert not B.paired_not_worse(_diff(-0.001, -3.0))   # the judge reads measurably fewer hits
    assert not B.paired_not_worse(_diff(0.0, 0.1))       # FD measurably higher
    # a default that reads 1.000 [1.000, 1.000]: one miss in 300 fails rule 1 and rule 2, not rule 3
    ref, one_miss = _row(1.0, 1.0, 28.7, 47.3), _row(0.997, 0.99, 20.3, 37.6)
    diff = _diff(0.0, -16.8)
    assert [B.RULES[r](one_miss, diff, ref) for r in ("rule 1", "rule 2", "rule 3")] == [False, False, True]
    assert B.ADOPTED == "rule 3"


def test_each_rule_takes_the_fewest_evaluations_it_admits_ties_to_the_lower_fd(tmp_path, monkeypatch):
    """``sweep`` on cached rows (no drawing): the default is always admitted, so every rule has a choice."""
    import json

    default = B.Setting(*B.DEFAULTS["digits-cond"])
    rows = {default.name: {**_row(1.0, 1.0, 28.7, 47.3, nfe=20), "paired_vs_default": _diff(0.0, 0.0)}}
    for s, judge, fd, d in [(B.Setting("ddim", 4), 1.0, 33.7, _diff(0.0, 2.0)),        # inside, paired worse
                            (B.Setting("dpm++", 4), 0.997, 23.2, _diff(0.0, -14.1)),   # one miss, paired fine
                            (B.Setting("unipc", 4), 0.997, 25.5, _diff(0.0, -11.4)),   # the same, higher FD
                            (B.Setting("ddim", 8), 1.0, 31.0, _diff(0.0, -2.4))]:      # inside, paired fine
        rows[s.name] = {**_row(judge, judge, fd, fd * 1.6, nfe=s.nfe), "setting": B.dataclasses.asdict(s),
                        "paired_vs_default": d}
    rows[default.name]["setting"] = B.dataclasses.asdict(default)
    monkeypatch.setattr(B, "CACHE", tmp_path)
    monkeypatch.setattr(B, "grid", lambda model: [B.Setting(**r["setting"]) for r in rows.values()])
    (tmp_path / "digits-cond-selection-paired.json").write_text(json.dumps(rows))
    assert B.sweep("digits-cond")["chosen"] == {"rule 1": "ddim 4", "rule 2": "ddim 8", "rule 3": "dpm++ 4"}


def test_the_grid_holds_no_setting_slower_than_the_default_and_teleportation_costs_fewer_evaluations():
    for model, (scheduler, steps) in B.DEFAULTS.items():
        settings = B.grid(model)
        assert B.Setting(scheduler, steps) in settings
        assert all(s.nfe <= steps for s in settings)
        assert {s.scheduler for s in settings} == set(B.SCHEDULERS)
        tele = [s for s in settings if s.teleport]
        assert tele and all(s.nfe == steps - s.teleport for s in tele)
    assert len({s.name for s in B.grid("shapes-t2i")}) == len(B.grid("shapes-t2i"))  # names key the cache
    assert B.Setting("dpm++", 15, precision="bf16").name == "dpm++ 15, bf16"


def test_settings_are_chosen_on_other_prompts_and_seeds_than_those_reported():
    assert not {c["prompt"] for c in B.SELECTION_PROMPTS} & {c["prompt"] for c in B.REPORT_PROMPTS}
    for model, seeds in B.SEEDS.items():
        n = 300  # the larger set (digits: 30 per class); image i uses seed + i
        assert abs(seeds["selection"] - seeds["report"]) >= n, model


def test_the_guide_steps_margins_have_to_be_shown_and_the_tab_follows_the_verdict():
    import json

    import bench_guide as G

    assert G.admitted({"accuracy": {"low": -0.05}, "fd_per_class": {"high": 15.0}}, 150.0)
    assert not G.admitted({"accuracy": {"low": -0.051}, "fd_per_class": {"high": -5.0}}, 150.0)
    # an FD interval that covers 0 but reaches past the margin: too few images to tell, not admitted
    assert not G.admitted({"accuracy": {"low": 0.0}, "fd_per_class": {"high": 15.1}}, 150.0)
    r = json.loads((G.ROOT / "results" / "guide_steps.json").read_text())
    adopted = r.get("report", {}).get("holds") and r["chosen"]
    expected = (adopted or r["default"])["sampler"], (adopted or r["default"])["steps"]
    assert G.tab_default()[:2] == expected and G.tab_default()[2] == r["scale"]


def test_the_debias_steps_rule_needs_every_margin_shown_and_every_larger_step_count_passing():
    import json

    import bench_debias as D

    ok = {"accuracy": {"low": -0.05}, "fd": {"high": 10.0}, "bias": {"low": -0.1, "high": 0.1}}
    assert D.passes(ok, 100.0)
    assert not D.passes({**ok, "bias": {"low": -0.11, "high": 0.0}}, 100.0)   # the bias readout moved too far
    assert not D.passes({**ok, "fd": {"high": 10.1}}, 100.0)                 # FD margin not shown
    assert not D.passes({**ok, "accuracy": {"low": -0.06}}, 100.0)
    rows = [{"scheduler": "ddim", "steps": n, "passes": ok_} for n, ok_ in ((6, True), (8, False), (10, True))]
    rows.append({"scheduler": "unipc", "steps": 6, "passes": True})
    # DDIM 6 passes but DDIM 8 does not: an edge between failures is not admitted
    assert [(r["scheduler"], r["steps"]) for r in D.admitted(rows)] == [("ddim", 10), ("unipc", 6)]
    r = json.loads((D.RESULTS / "debias_steps.json").read_text())
    adopted = r.get("report", {}).get("holds") and r["chosen"]
    expected = (adopted or r["default"])["scheduler"], (adopted or r["default"])["steps"]
    assert D.tab_default() == expected


def test_the_forecast_steps_margin_and_the_tab_follows_the_verdict():
    import json

    import bench_forecast as BF
    import numpy as np

    e = BF.relative_interval(np.array([0.01, 0.02, 0.03]))
    assert e["low"] <= e["value"] <= e["high"] and abs(e["value"] - 0.02) < 1e-12
    r = json.loads((BF.ROOT / "results" / "forecast_steps.json").read_text())
    assert all(row["passes"] == (row["relative_crps"]["high"] <= BF.CRPS_MARGIN and not row["diverged"])
               for row in r["selection"])
    adopted = r.get("report", {}).get("holds") and r["chosen"]
    expected = (adopted or r["default"])["sampler"], (adopted or r["default"])["steps"]
    from studio.methods import forecast

    p = forecast.Params()
    assert (p.sampler, p.ddim_steps) == expected
