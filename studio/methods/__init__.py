"""One file per method (typed ``Params`` + ``run`` generator) and :data:`METHODS`, their registry.

The contract every ``studio/methods/<name>.py`` keeps::

    @dataclass
    class Params: ...                        # defaults, limits and help in field metadata

    def run(p: Params, manager, **inputs) -> Iterator[Progress | Result]:
        ...                                  # validates, leases models inside, yields progress, then one result

``inputs`` are what a person uploads or draws (a drawing, a mask, a CSV's series); a method
whose run trains (Tune) also takes ``stop``, a callable polled between steps: when it answers
True the run ends early and still yields its result (what was trained so far).

The registry is plain data: importing it imports no method (habit 6), so a tab, a notebook, the
CLI or a test loads only the method it uses. A new method costs one method file, one tab file,
one test file and one line below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

from studio.core.models import ModelKind


@dataclass(frozen=True)
class Method:
    id: str                       # registry id, also the tab's id and the docs page docs/<id>.md
    title: str                    # the tab's title
    kinds: tuple[ModelKind, ...]  # the model kinds its model dropdown lists (ModelManager.keys(kinds=...))
    tab: str                      # its tab builder, "components.<module>.<function>(manager) -> dict"

    @property
    def module(self) -> ModuleType:
        """``studio.methods.<id>`` (imported on first use)."""
        return importlib.import_module(f"{__name__}.{self.id}")

    @property
    def Params(self) -> type:
        return self.module.Params

    @property
    def run(self) -> Callable[..., Any]:
        return self.module.run

    def models(self, manager) -> list[str]:
        """The manager's keys this method can drive."""
        return manager.keys(kinds=self.kinds)


METHODS: tuple[Method, ...] = (
    Method("generate", "Generate", ("image",), "components.generate_tab.build_generate_tab"),
    Method("compose", "Compose", ("image",), "components.compose_tab.build_compose_tab"),
    Method("guide", "Guide", ("image",), "components.guide_tab.build_guide_tab"),
    Method("forecast", "Forecast", ("series",), "components.forecast_tab.build_forecast_tab"),
    Method("edit", "Edit", ("idempotent",), "components.edit_tab.build_edit_tab"),
    Method("tune", "Tune", ("image",), "components.tune_tab.build_tune_tab"),
    Method("nag", "Architectures", ("nag",), "components.nag_tab.build_nag_tab"),
    Method("classify", "Classify", ("image",), "components.classify_tab.build_classify_tab"),
    Method("theory", "Theory", ("image",), "components.theory_tab.build_theory_tab"),
    Method("train", "Train", ("image",), "components.train_tab.build_train_tab"),
    Method("weights", "Weights", ("weightgen",), "components.weights_tab.build_weights_tab"),
    Method("debias", "Debias", ("invdiff",), "components.debias_tab.build_debias_tab"),
    Method("subject", "Subject", ("var",), "components.subject_tab.build_subject_tab"),
    Method("resolution", "Resolution", ("inr",), "components.resolution_tab.build_resolution_tab"),
    Method("swap", "Swap", ("image",), "components.swap_tab.build_swap_tab"),
)


def method(method_id: str) -> Method:
    """The registry entry ``method_id``; KeyError naming the known ones otherwise."""
    for m in METHODS:
        if m.id == method_id:
            return m
    raise KeyError(f"unknown method {method_id!r}; known: {', '.join(m.id for m in METHODS)}")
