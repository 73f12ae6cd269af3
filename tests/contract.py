"""The method contract, as a tester mixin (in the style of diffusers' ``PipelineTesterMixin``).

Every registered method's own test file has one class::

    class TestGenerateContract(MethodContract):
        method_id = "generate"

        @pytest.fixture
        def manager(self, tiny_manager):      # a manager with tiny random models the method can drive
            return tiny_manager

        def params(self):                     # fast, valid parameters (a seed fixed)
            return generate.Params(model="digits-cond", steps=2, n_images=2)

        bad = [({"steps": 0}, "Steps")]       # (changes to params(), message the UserError must match)

and inherits the checks below: the registry entry is well formed, the defaults are valid, progress
comes before exactly one result, the same seed gives the same output, leases are released and the
lent weights are unchanged, bad input raises the user error and holds no lease.
``tests/test_registry.py`` checks that every method in ``METHODS`` has such a class.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import numpy as np
import pytest
import torch

from studio.core import loading
from studio.core.params import validate
from studio.core.sampling import Progress
from studio.errors import UserError
from studio.methods import method


class MethodContract:
    method_id: str = ""
    bad: list[tuple[dict, str]] = []

    # what a method's test supplies ----------------------------------------------------------
    @pytest.fixture
    def manager(self):
        raise NotImplementedError("a contract test class supplies a `manager` fixture")

    def params(self):
        raise NotImplementedError

    def inputs(self) -> dict:
        """Uploads and drawings ``run`` takes besides the params (none by default)."""
        return {}

    def output(self, result) -> Any:
        """What must be equal between two runs with one seed (default: the result's tensors)."""
        return result.tensors

    # helpers ----------------------------------------------------------------------------------
    @property
    def entry(self):
        return method(self.method_id)

    def run_all(self, manager, params=None) -> list:
        return list(self.entry.run(params if params is not None else self.params(), manager, **self.inputs()))

    @staticmethod
    def weights(manager) -> dict[str, list[torch.Tensor]]:
        """Copies of every loaded model's tensors, by key."""
        out = {}
        for row in manager.status():
            if row["where"] != "not loaded":
                with manager.use(row["model"]) as obj:
                    out[row["model"]] = [t.detach().clone() for m in loading.modules_of(obj)
                                         for t in (*m.parameters(), *m.buffers())]
        return out

    # the contract -----------------------------------------------------------------------------
    def test_the_registry_entry_names_a_params_dataclass_and_a_run_generator(self):
        entry = self.entry
        assert dataclasses.is_dataclass(entry.Params) and entry.Params.__name__ == "Params"
        assert inspect.isgeneratorfunction(entry.run), "run must be a generator (progress, then the result)"
        assert entry.kinds and entry.tab.startswith("components.")
        for f in dataclasses.fields(entry.Params):
            assert f.metadata.get("label"), f"field {f.name} has no spec(...) label"

    def test_defaults_are_valid(self):
        validate(self.entry.Params())
        validate(self.params())

    def test_progress_comes_before_one_result_and_leases_are_released(self, manager):
        items = self.run_all(manager)
        *progress, result = items
        assert progress, "the run yielded no progress"
        assert all(isinstance(p, Progress) for p in progress)
        assert not isinstance(result, Progress)
        assert isinstance(getattr(result, "parameters", None), dict) and result.parameters
        assert all(row["in use"] == 0 for row in manager.status())

    def test_the_same_seed_gives_the_same_output_and_the_weights_do_not_change(self, manager):
        first = self.output(self.run_all(manager)[-1])
        before = self.weights(manager)
        second = self.output(self.run_all(manager)[-1])
        assert_same(first, second)
        after = self.weights(manager)
        assert before.keys() <= after.keys()
        for key, tensors in before.items():
            assert all(torch.equal(a, b) for a, b in zip(tensors, after[key])), f"the weights of {key} changed"

    def test_bad_input_raises_the_user_error_and_holds_no_lease(self, manager):
        assert self.bad, "list at least one bad input"
        for changes, message in self.bad:
            with pytest.raises(UserError, match=message):
                self.run_all(manager, dataclasses.replace(self.params(), **changes))
            assert all(row["in use"] == 0 for row in manager.status())


def assert_same(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    else:
        assert a == b
