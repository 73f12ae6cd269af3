"""The quality-per-second rule of ``benchmarks/bench_speed_defaults.py`` (issue 29): what counts as
"inside the default's intervals", and which settings compete."""

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
