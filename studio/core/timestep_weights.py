"""Timestep weighting of per-timestep denoising errors (Jeong, Uselis, Oh, Rohrbach, "Diffusion
Classifiers Understand Compositionality, but Conditions Apply", NeurIPS 2025; official
``analysis_cfg/learn_timestep_weights.py``): which candidate a set of (weighted) errors picks, and
the official learner of the weights."""

from __future__ import annotations

import numpy as np

from studio import lazy

torch = lazy.load("torch")
F = lazy.load("torch.nn.functional")


def learn_timestep_weights(errors: np.ndarray, truth: np.ndarray, train: np.ndarray, val: np.ndarray, *,
                           l1: float = 1e-3, steps: int = 5000, lr: float = 0.01, seed: int = 0) -> dict:
    """The official ``learn_timestep_weights.py`` (Jeong et al.): free weights ``w_t``, score
    ``-sum_t w_t err_t / T``, cross-entropy on the right candidate plus ``l1 * ||w||_1``, Adam at
    ``lr`` for ``steps`` steps on the images ``train``; the weights with the best accuracy on ``val``
    are kept. ``errors`` (N, candidates, T); returns the weights (T,), the step chosen and the
    validation accuracy (the official code also reports the weights with negatives clipped at 0)."""
    torch.manual_seed(seed)
    e = torch.as_tensor(errors, dtype=torch.float64)
    y = torch.as_tensor(truth, dtype=torch.long)
    n_t = e.shape[-1]
    w = torch.ones(n_t, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([w], lr=lr)
    e_tr, y_tr, e_va, y_va = e[train], y[train], e[val], y[val]

    def accuracy(weights):
        with torch.no_grad():
            return float((torch.argmax(-(e_va @ weights), 1) == y_va).double().mean())

    best = {"weights": w.detach().clone(), "step": 0, "val_accuracy": accuracy(w)}
    for step in range(1, steps + 1):
        loss = F.cross_entropy(-(e_tr @ w) / n_t, y_tr) + l1 * w.abs().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        acc = accuracy(w)
        if acc > best["val_accuracy"]:
            best = {"weights": w.detach().clone(), "step": step, "val_accuracy": acc}
    return {"weights": best["weights"].numpy(), "step": best["step"], "val_accuracy": best["val_accuracy"]}


def weighted_choice(errors: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The candidate each image picks from (N, candidates, T) errors: the lowest (weighted) mean."""
    w = np.ones(errors.shape[-1]) if weights is None else np.asarray(weights)
    return np.argmax(-(errors * w).sum(-1), axis=1)
