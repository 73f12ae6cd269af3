"""Measures of a neural architecture search (the Architectures tab, its notebook and benchmark).

* :func:`vun`: validity, uniqueness and novelty of generated cells, as DiffusionNAG's official
  ``analysis/arch_functions.py`` defines them.
* Search efficiency: :func:`best_so_far` (best true accuracy after training the first k distinct
  cells of a search's order), :func:`random_search_curves` (the same for random search) and
  :func:`trained_to_reach` (cells trained before one reaches a target, e.g. the space's top 1%,
  :func:`studio.data.nasbench.top_fraction`).
* The cell a search would pick: :func:`chosen_so_far` (the best-validation cell among the first k
  trained), :func:`random_orders` (random search's orders, the draws of :func:`random_search_curves`),
  so the picked cell's *test* accuracy can be read beside its validation accuracy.
* Intervals over runs: :func:`bootstrap_median` and :func:`bootstrap_ratio` (95% percentile bootstrap).

Accuracies come as ``values``: cell -> validation accuracy (:func:`studio.data.nasbench.space_values`).
"""

from __future__ import annotations

import numpy as np


def vun(archs: list[str | None], train_archs: set[str]) -> dict[str, float]:
    """Validity (share of samples that are cells), uniqueness (distinct valid / valid) and novelty
    (distinct cells not in ``train_archs``, the score network's training set / distinct)."""
    valid = [a for a in archs if a is not None]
    unique = set(valid)
    return {"validity": len(valid) / max(len(archs), 1),
            "uniqueness": len(unique) / max(len(valid), 1),
            "novelty": len(unique - train_archs) / max(len(unique), 1)}


def best_so_far(order: list[str], values: dict[str, float]) -> np.ndarray:
    """Best validation accuracy after training the first k distinct cells of ``order`` (k = 1..)."""
    seen, best, out = set(), -np.inf, []
    for arch in order:
        if arch in seen:
            continue
        seen.add(arch)
        best = max(best, values[arch])
        out.append(best)
    return np.array(out)


def chosen_so_far(order: list[str], values: dict[str, float]) -> list[str]:
    """The cell a search picks after training the first k distinct cells of ``order`` (k = 1..):
    the best by ``values`` (validation accuracy) so far, the earlier one on a tie."""
    seen, best, out = set(), None, []
    for arch in order:
        if arch in seen:
            continue
        seen.add(arch)
        if best is None or values[arch] > values[best]:
            best = arch
        out.append(best)
    return out


def trained_to_reach(curve: np.ndarray, target: float) -> float:
    """How many cells were trained before one reached ``target`` (inf when none did)."""
    hit = np.nonzero(curve >= target)[0]
    return float(hit[0] + 1) if len(hit) else float("inf")


def random_orders(values: dict[str, float], n_runs: int, length: int, seed: int = 0) -> list[list[str]]:
    """Random search's orders: ``n_runs`` draws of ``length`` distinct cells, uniformly."""
    cells = sorted(values)
    rng = np.random.default_rng(seed)
    return [[cells[i] for i in rng.permutation(len(cells))[:length]] for _ in range(n_runs)]


def random_search_curves(values: dict[str, float], n_runs: int, length: int, seed: int = 0) -> np.ndarray:
    """(n_runs, length) best-so-far curves of random search (the orders of :func:`random_orders`)."""
    cells = sorted(values)
    acc = np.array([values[a] for a in cells])
    rng = np.random.default_rng(seed)
    return np.stack([np.maximum.accumulate(acc[rng.permutation(len(acc))[:length]]) for _ in range(n_runs)])


def bootstrap_median(values, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(median, low, high): the median of ``values`` over runs with a percentile bootstrap interval
    (``inf``, a run that never reached its target, is allowed and sorts last)."""
    v = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    meds = np.median(v[rng.integers(0, v.size, size=(n_boot, v.size))], 1)
    a = (1 - level) / 2
    return float(np.median(v)), float(np.quantile(meds, a, method="lower")), float(np.quantile(meds, 1 - a, method="higher"))


def bootstrap_ratio(num, den, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(ratio, low, high): median(``num``) / median(``den``), the two samples resampled independently
    (e.g. random search's cells-to-top-1% over a method's: how many times fewer the method needs)."""
    a, b = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    rng = np.random.default_rng(seed)
    ra = np.median(a[rng.integers(0, a.size, size=(n_boot, a.size))], 1)
    rb = np.median(b[rng.integers(0, b.size, size=(n_boot, b.size))], 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = ra / rb
    q = (1 - level) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        point = float(np.median(a) / np.median(b))
    return point, float(np.nanquantile(r, q)), float(np.nanquantile(r, 1 - q))
