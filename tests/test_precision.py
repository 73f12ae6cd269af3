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
