"""The measured precision path: the rule, and the timing on tiny models."""

from __future__ import annotations

import math

import pytest

from studio.core import precision


def test_reduced_precision_needs_both_a_measured_speedup_and_a_recorded_quality():
    assert precision.choose(2.0, "bf16", {"bf16": True})[0] == "bf16"
    choice, why = precision.choose(2.0, "bf16", None)
    assert choice == "fp32" and "records no judge accuracy" in why
    assert precision.choose(2.0, "bf16", {"fp16": True})[0] == "fp32"  # a record for the other precision
    choice, why = precision.choose(0.05, "bf16", {"bf16": True})
    assert choice == "fp32" and "not faster" in why
    assert precision.choose(precision.MIN_SPEEDUP, "fp16", {"fp16": True})[0] == "fp16"


@pytest.mark.parametrize("key", ["digits-cond", "shapes-t2i"])
def test_measure_times_both_forwards_on_the_managers_device_and_keeps_the_answer(tiny_manager, key):
    t = precision.measure(tiny_manager, key, batch=2, repeats=1, again=True)
    assert (t.model, t.device, t.batch, t.reduced) == (key, "cpu", 2, "bf16")
    assert t.fp32_ms > 0 and t.reduced_ms > 0 and math.isfinite(t.rel_diff)
    assert 0 < t.rel_diff < 0.5  # bf16 rounds; it does not compute something else
    assert t.choice == "fp32"  # the tiny models record no reduced-precision quality
    assert precision.measure(tiny_manager, key) is t  # kept for the process
    assert t in precision.measured()
    assert all(row["in use"] == 0 for row in tiny_manager.status())


def _auto_manager(recorded: dict | None):
    from studio.core.manager import ModelManager
    from studio.core.models import DiffusionModel
    from studio.train.diffusion import noise_scheduler
    from tests.conftest import tiny_digits_unet

    m = ModelManager(device="cpu", precision="auto")
    info = {"null_class": 10, **({"reduced_precision": recorded} if recorded is not None else {})}
    m.register("digits-cond", lambda: DiffusionModel("digits-cond", tiny_digits_unet(), dict(noise_scheduler().config),
                                                     "epsilon", "class", dict(info)),
               info={"kind": "diffusion", "conditioning": "class"})
    return m


def _fake_timing(choice: str):
    return precision.PrecisionTiming("digits-cond", "cpu", 4, 10.0, "bf16", 5.0, 0.01, choice, "faked for the test")


def test_an_auto_manager_runs_a_model_in_the_precision_the_rule_picks_and_the_forward_returns_fp32(monkeypatch):
    import torch

    calls = []
    monkeypatch.setattr(precision, "measure", lambda manager, key, **kw: calls.append(key) or _fake_timing("bf16"))
    m = _auto_manager({"bf16": True})
    with m.use("digits-cond") as dm:
        assert dm.precision == "bf16" and calls == ["digits-cond"]
        x, t, cond = torch.randn(2, 1, 8, 8), torch.tensor([500, 500]), {"class_labels": torch.tensor([3, 10])}
        low = dm.model_fn(x, t, cond)
        dm.precision = "fp32"
        full = dm.model_fn(x, t, cond)
        dm.precision = "bf16"
    assert low.dtype == full.dtype == torch.float32
    assert 0 < (low - full).abs().max() < 0.5 * full.std()  # rounded, not something else
    with m.use("digits-cond"):
        assert calls == ["digits-cond"]  # timed when it loads, not on every lease


@pytest.mark.parametrize("recorded, manager_precision", [(None, "auto"), ({"bf16": False}, "auto"),
                                                         ({"fp16": True}, "auto"), ({"bf16": True}, "fp32")])
def test_no_record_for_this_devices_precision_or_a_fp32_manager_keeps_fp32_without_timing(monkeypatch, recorded,
                                                                                          manager_precision):
    monkeypatch.setattr(precision, "measure", lambda *a, **kw: pytest.fail("timed a model it could not switch"))
    m = _auto_manager(recorded)
    m.precision = manager_precision
    with m.use("digits-cond") as dm:
        assert dm.precision == "fp32"


def test_a_rule_that_answers_fp32_keeps_fp32_and_a_real_timing_agrees_with_its_choice(monkeypatch):
    monkeypatch.setattr(precision, "measure", lambda manager, key, **kw: _fake_timing("fp32"))
    with _auto_manager({"bf16": True}).use("digits-cond") as dm:
        assert dm.precision == "fp32"
    monkeypatch.undo()
    m = _auto_manager({"bf16": True})
    with m.use("digits-cond") as dm:
        t = precision.measure(m, "digits-cond")  # the timing apply() took at load, kept
        assert dm.precision == t.choice and t.fp32_ms > 0


def test_a_manager_refuses_an_unknown_precision_setting():
    from studio.core.manager import ModelManager

    with pytest.raises(ValueError, match="'fp32' or 'auto'"):
        ModelManager(device="cpu", precision="bf16")


def test_generate_names_the_precision_it_sampled_in(monkeypatch, tiny_manager):
    from studio.methods import generate

    def result_of(p, manager):
        return list(generate.run(p, manager))[-1]

    monkeypatch.setattr(precision, "measure", lambda manager, key, **kw: _fake_timing("bf16"))
    m = _auto_manager({"bf16": True})
    p = generate.Params(model="digits-cond", scheduler="ddim", steps=2, n_images=1, preview_every=0)
    assert result_of(p, m).parameters["precision"] == "bf16"
    assert result_of(p, tiny_manager).parameters["precision"] == "fp32"


def test_the_apps_manager_follows_the_rule_and_a_plain_manager_keeps_fp32():
    from studio.core.manager import ModelManager, default_manager

    assert default_manager().precision == "auto"  # what `studio launch` and the Space serve
    assert ModelManager(device="cpu").precision == "fp32"  # tests, scripts: figures independent of the machine


def test_the_zoo_records_reduced_precision_only_with_its_measured_verdict():
    """studio.json's record and the MANIFEST's quality come from the same bench run (bench_speed_defaults --record)."""
    from studio.core.loading import ZOO_DIR, entry_info, read_manifest

    for name in ("shapes-t2i", "digits-cond"):
        recorded = entry_info(ZOO_DIR / name).get("reduced_precision")
        verdict = read_manifest()[name]["quality"]["speed_defaults"]
        assert recorded == {"bf16": verdict["bf16"]}, name
