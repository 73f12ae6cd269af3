"""Measures of a neural architecture search (the Architectures tab, its notebook and benchmark).

* :func:`vun`: validity, uniqueness and novelty of generated cells, as DiffusionNAG's official
  ``analysis/arch_functions.py`` defines them.
* Search efficiency: :func:`best_so_far` (best true accuracy after training the first k distinct
  cells of a search's order), :func:`random_search_curves` (the same for random search) and
  :func:`trained_to_reach` (cells trained before one reaches a target, e.g. the space's top 1%,
  :func:`studio.data.nasbench.top_fraction`).

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


def trained_to_reach(curve: np.ndarray, target: float) -> float:
    """How many cells were trained before one reached ``target`` (inf when none did)."""
    hit = np.nonzero(curve >= target)[0]
    return float(hit[0] + 1) if len(hit) else float("inf")


def random_search_curves(values: dict[str, float], n_runs: int, length: int, seed: int = 0) -> np.ndarray:
    """(n_runs, length) best-so-far curves of random search (distinct cells, uniformly)."""
    cells = sorted(values)
    acc = np.array([values[a] for a in cells])
    rng = np.random.default_rng(seed)
    return np.stack([np.maximum.accumulate(acc[rng.permutation(len(acc))[:length]]) for _ in range(n_runs)])
