"""studio.lazy: modules imported on first use (the app builds its page before torch is imported)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from studio import lazy


def run_fresh(code: str) -> None:
    """Run ``code`` in a fresh interpreter (nothing imported yet); it must print ok."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_a_lazy_module_imports_on_its_first_attribute_and_then_is_the_real_one():
    code = ("import sys\nfrom studio import lazy\n"
            "m = lazy.load('fractions')\nassert 'fractions' not in sys.modules, 'imported at load()'\n"
            "assert 'not imported yet' in repr(m)\n"
            "assert m.Fraction(1, 3) + m.Fraction(1, 6) == m.Fraction(1, 2)\n"
            "import fractions\nassert m.Fraction is fractions.Fraction and m.loaded() is fractions\n"
            "assert lazy.load('fractions') is m and 'Fraction' in dir(m)\nprint('ok')\n")
    run_fresh(code)


def test_a_missing_module_fails_at_first_use_with_the_import_error():
    m = lazy.load("studio_no_such_module")
    with pytest.raises(ModuleNotFoundError):
        m.anything


def test_threads_that_touch_a_lazy_module_at_once_all_get_the_real_module():
    code = ("import sys, threading\nfrom studio import lazy\nm = lazy.load('decimal')\nseen = []\n"
            "ts = [threading.Thread(target=lambda: seen.append(m.Decimal('1.5') * 2)) for _ in range(8)]\n"
            "[t.start() for t in ts]; [t.join() for t in ts]\n"
            "import decimal\nassert seen == [decimal.Decimal('3.0')] * 8, seen\nprint('ok')\n")
    run_fresh(code)


def test_no_grad_turns_gradients_off_in_a_function_and_at_every_step_of_a_generator():
    @lazy.no_grad
    def plain(x):
        return torch.is_grad_enabled(), x * 2

    @lazy.no_grad
    def steps(n):
        for _ in range(n):
            yield torch.is_grad_enabled()
        return "done"

    x = torch.ones(2, requires_grad=True)
    enabled, y = plain(x)
    assert not enabled and not y.requires_grad
    assert torch.is_grad_enabled()  # restored after the call
    gen = steps(3)
    first = next(gen)
    assert torch.is_grad_enabled()  # between steps the caller's mode holds
    rest = []
    with pytest.raises(StopIteration) as stop:
        while True:
            rest.append(next(gen))
    assert [first, *rest] == [False, False, False] and stop.value.value == "done"
    assert plain.__name__ == "plain" and steps.__name__ == "steps"

