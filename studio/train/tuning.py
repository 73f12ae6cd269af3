"""Which weights a tuning run trains: a LoRA adapter, SaRA's sparse smallest weights, or all of them.

Every Tune objective (:mod:`studio.methods.tune`) trains one of these on a copy of the lent UNet;
the manager's model is never touched. Each exposes the network to call (``net``), the tensors
the optimizer updates (``parameters()``), the frozen base network (``reference()``, for the
objectives with a reference term), ``distance_sq()`` (``||theta - theta_0||^2``, R0's weight
regulariser), a per-step ``penalty()`` and a ``state()`` to save.

* **LoRA** (:mod:`studio.nets.lora`, peft): rank-r factors on the UNet's convolutions.
* **SaRA** (Hu et al., ICLR 2025; official ``optim/adamw.py``): the entries of every parameter
  tensor whose magnitude is below that tensor's threshold train, and only they are leaf tensors
  with optimizer state ("unstructured backpropagation": :class:`SparseEntries` scatters them into
  the frozen weight, so the gradient they get is the weight's gradient gathered at the mask).
  A nuclear-norm penalty ``lambda_rank ||W * M||_*`` on one random large weight per step (the
  trainable part, as a matrix) pushes the update towards low rank, and halfway through
  (:meth:`SaraWeights.progress`) the set is re-selected on the current weights: entries that grew
  past the threshold are frozen at their learned values, and the optimizer restarts on the new set.
  **Deviations, said where they are made:** the threshold is per tensor (the first selection is
  exactly its ``fraction`` smallest entries by ``|w|``, the threshold the next entry's magnitude), where the release uses one absolute threshold (2e-3, which selects 4.5%
  of this UNet's weights and 10-20% of Stable Diffusion's); 4-D convolution kernels count as
  (out, in x k x k) matrices and "large" is a smaller side of at least :data:`MIN_RANK_DIM` (the
  release: 2-D weights with both sides above 64, which this UNet does not have); only the
  convolution and linear weights take part (1-D tensors, norm scales of about 1 and biases, stay
  frozen: a per-tensor share would pick norm scales, which the release's absolute threshold never
  selects); the released
  optimizer writes ``abs()`` of the small weights into the model at the start (the sign of every
  selected weight is dropped, so the tuned model does not start as the base): here the entries
  keep their sign unless ``keep_sign=False`` (the test measures both); and in the release the
  nuclear norm's gradient is accumulated on the original parameter objects, which the update
  never reads (as we read ``adamw.py``), while here it is added to the trainable entries'
  gradient, as the paper describes the regulariser.
* **full**: every weight of the copy trains (AdamW state for all of them).
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
from typing import Literal

import numpy as np

from studio import lazy
from studio.nets.lora import adapter_off, lora_state, trainable, with_lora

torch = lazy.load("torch")
parametrize = lazy.load("torch.nn.utils.parametrize")

WeightsKind = Literal["lora", "sara", "full"]
MIN_RANK_DIM = 32


def index_bytes(weights) -> int:
    """Bytes of SaRA's position index (what its sparse entries cost beside the optimizer state); 0 otherwise."""
    return sum(e.index.numel() * e.index.element_size() for e in getattr(weights, "entries", {}).values())


def optimizer_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes held by the optimizer's state tensors (measured after a step; AdamW: 2 per entry)."""
    return sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
               if torch.is_tensor(v) and v.dim() > 0)


class LoraWeights:
    kind = "lora"

    def __init__(self, unet: torch.nn.Module, rank: int, seed: int):
        self.net = with_lora(unet, rank, seed)
        self.rank = rank
        self._params = trainable(self.net)

    def parameters(self) -> list[torch.Tensor]:
        return self._params

    def reference(self):
        return adapter_off(self.net)

    def distance_sq(self) -> torch.Tensor:
        """``sum ||(alpha / r) B A||^2`` over the LoRA layers: the squared distance of the merged weights to the base."""
        from peft.tuners.lora import LoraLayer

        return sum(m.get_delta_weight("default").pow(2).sum() for m in self.net.modules()
                   if isinstance(m, LoraLayer) and "default" in m.lora_A)

    def penalty(self, gen: random.Random) -> dict[str, torch.Tensor]:
        return {}

    def progress(self, step: int, total: int) -> bool:
        return False

    def state(self) -> dict[str, torch.Tensor]:
        return lora_state(self.net)


class FullWeights:
    kind = "full"

    def __init__(self, unet: torch.nn.Module):
        self.net = copy.deepcopy(unet).float().requires_grad_(True)
        self.base = copy.deepcopy(unet).float().requires_grad_(False).eval()
        self._start = [p.detach().clone() for p in self.net.parameters()]

    def parameters(self) -> list[torch.Tensor]:
        return list(self.net.parameters())

    @contextlib.contextmanager
    def reference(self):
        yield self.base

    def distance_sq(self) -> torch.Tensor:
        return sum((p - p0).pow(2).sum() for p, p0 in zip(self.net.parameters(), self._start))

    def penalty(self, gen: random.Random) -> dict[str, torch.Tensor]:
        return {}

    def progress(self, step: int, total: int) -> bool:
        return False

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone().contiguous() for k, v in self.net.state_dict().items()}


class SaraWeights:
    kind = "sara"

    def __init__(self, unet: torch.nn.Module, fraction: float, rank_weight: float = 5e-4,
                 progressive: bool = True, keep_sign: bool = True):
        self.net = copy.deepcopy(unet).float().requires_grad_(False)
        self.base = copy.deepcopy(unet).float().requires_grad_(False).eval()
        self.fraction, self.rank_weight, self.progressive, self.keep_sign = fraction, rank_weight, progressive, keep_sign
        self.thresholds: dict[str, float] = {}
        first = {}
        for name, p in list(self.net.named_parameters()):
            if p.dim() < 2:  # norm scales (about 1) and biases stay frozen: see the module's docstring
                continue
            flat = p.detach().abs().flatten()
            k = max(1, int(round(fraction * flat.numel())))
            order = torch.argsort(flat, stable=True)  # exactly the k smallest (ties, e.g. norm weights at 1, broken by position)
            first[name] = torch.zeros_like(flat, dtype=torch.bool).index_fill_(0, order[:k], True).view_as(p)
            self.thresholds[name] = float(flat[order[k]]) if k < flat.numel() else float("inf")
        self.reselected = False
        self._select(keep_sign, first)
        self.initial_count = self.count

    def _sites(self):
        for name in self.thresholds:
            module_name, _, attr = name.rpartition(".")
            yield name, self.net.get_submodule(module_name), attr

    def _select(self, keep_sign: bool, masks: dict | None = None) -> None:
        """Parametrise every weight with ``masks`` (the first selection), else with its entries now below
        its threshold (the re-selection, on the current values)."""
        from studio.nets.sparse import SparseEntries  # a torch module class: imported on use, not with the page

        self.entries: dict[str, SparseEntries] = {}
        for name, module, attr in self._sites():
            if parametrize.is_parametrized(module, attr):  # bake the learned values, then select again
                parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
            weight = getattr(module, attr)
            weight.requires_grad_(False)
            mask = masks[name] if masks is not None else weight.detach().abs() < self.thresholds[name]
            entries = SparseEntries(weight, mask, keep_sign)
            parametrize.register_parametrization(module, attr, entries)
            self.entries[name] = entries
        self._large = [n for n, e in self.entries.items()
                       if e.start.numel() and self._matrix_shape(n) is not None]

    def _matrix_shape(self, name: str) -> tuple[int, int] | None:
        module_name, _, attr = name.rpartition(".")
        w = getattr(self.net.get_submodule(module_name).parametrizations, attr).original
        if w.dim() < 2:
            return None
        shape = (w.shape[0], w[0].numel())
        return shape if min(shape) >= MIN_RANK_DIM else None

    @property
    def count(self) -> int:
        return sum(e.values.numel() for e in self.entries.values())

    def parameters(self) -> list[torch.Tensor]:
        return [e.values for e in self.entries.values()]

    @contextlib.contextmanager
    def reference(self):
        yield self.base

    def distance_sq(self) -> torch.Tensor:
        # entries frozen at a re-selection keep their learned values: measure the whole weight then
        if self.reselected:
            base = dict(self.base.named_parameters())
            return sum((p - base[name]).pow(2).sum() for (name, *_), p in zip(self._sites(), self.merged_parameters()))
        return sum((e.values - e.start).pow(2).sum() for e in self.entries.values())

    def merged_parameters(self):
        for _, module, attr in self._sites():
            yield getattr(module, attr)

    def penalty(self, gen: random.Random) -> dict[str, torch.Tensor]:
        """``lambda_rank ||W * M||_*`` of one random large weight's trainable part (as a matrix)."""
        if not self.rank_weight or not self._large:
            return {}
        name = gen.choice(self._large)
        e = self.entries[name]
        rows, cols = self._matrix_shape(name)
        sparse = torch.zeros(rows * cols, dtype=e.values.dtype).scatter(0, e.index, e.values).view(rows, cols)
        return {"rank": self.rank_weight * torch.linalg.matrix_norm(sparse, ord="nuc")}

    def progress(self, step: int, total: int) -> bool:
        """At half of ``total`` (progressive mode): re-select the trainable set; True when the optimizer must restart."""
        if not self.progressive or self.reselected or step != total // 2 or total < 2:
            return False
        with torch.no_grad():
            self._select(self.keep_sign)
        self.reselected = True
        return True

    def state(self) -> dict[str, torch.Tensor]:
        """The changed entries only: ``<name>.index`` (flat positions) and ``<name>.values`` per weight
        (also those frozen at a re-selection, which the release's ``save_params`` would drop)."""
        out = {}
        with torch.no_grad():
            bases = dict(self.base.named_parameters())
            for (name, *_), merged in zip(self._sites(), self.merged_parameters()):
                base = bases[name]
                index = (merged != base).flatten().nonzero().squeeze(1)
                if index.numel():
                    out[f"{name}.index"], out[f"{name}.values"] = index, merged.flatten()[index].clone()
        return out


def make_weights(kind: str, unet: torch.nn.Module, *, rank: int = 8, seed: int = 0, fraction: float = 0.1,
                 rank_weight: float = 5e-4, progressive: bool = True, keep_sign: bool = True):
    """The trainable weights of ``kind`` on a copy of ``unet`` (the original is never modified)."""
    if kind == "lora":
        return LoraWeights(unet, rank, seed)
    if kind == "sara":
        return SaraWeights(unet, fraction, rank_weight, progressive, keep_sign)
    if kind == "full":
        return FullWeights(unet)
    raise ValueError(f"unknown weights {kind!r}; choose lora, sara or full")


def trainable_count(weights) -> int:
    return sum(p.numel() for p in weights.parameters())


def snapshot(weights) -> torch.nn.Module:
    """A frozen copy of the network as it stands (Diffusion-DRO's lagged policy): never a deep copy of a
    parametrised module (see :func:`plain_network`)."""
    if weights.kind == "sara":
        from studio.nets.sparse import apply_sparse

        return apply_sparse(weights.base, weights.state())
    return copy.deepcopy(weights.net).requires_grad_(False).eval()


def plain_network(weights) -> torch.nn.Module:
    """The tuned network as a plain module: for SaRA a copy of the base with the changed entries written
    in (what a saved SaRA model loads as; a deep copy of a parametrised module would share its
    dynamically made class, so removing the copy's parametrisations would break the original's);
    LoRA and full as they are."""
    if weights.kind != "sara":
        return weights.net.eval()
    from studio.nets.sparse import apply_sparse

    return apply_sparse(weights.base, weights.state())


EVAL_SEED = 50_000  # the comparison's sample seeds: seed * 100_003 + EVAL_SEED + i (not the validation grid's)
MIN_FD_SAMPLES = 100  # per FD set, above the FD net's 64 features (fewer give singular covariances)


@lazy.no_grad
def measure(base, tuned, judge: torch.nn.Module, fd_net: torch.nn.Module, *, targets: list, style: str | None,
            per_class: int = 10, seed: int = 0, steps: int | None = None, n_boot: int = 200) -> dict:
    """One run's row of the comparison: ``per_class`` samples of every digit (more where a set would have
    fewer than :data:`MIN_FD_SAMPLES`, e.g. one tuned digit) from the untuned (``base``)
    and the tuned (``tuned``) :class:`~studio.train.boot.FewStep` at ``steps`` (default: the student's
    most), image i from the same seed in both. On the digits among ``targets``: the style rate by the
    independent style judge (:mod:`studio.data.style_judge`), the judge's accuracy on the asked digit,
    and FD-digits of the tuned samples to the untuned ones (drift). On the other digits (when the
    targets leave some out): the judge's accuracy change and FD-digits drift there (forgetting).
    Values are ``{"value", "low", "high", "n"}`` (95% bootstrap, ``n_boot`` resamples for the FDs;
    accuracy changes paired by seed).
    ``style`` None (the user's own targets): no style rate."""
    from studio.core import metrics
    from studio.data import style_judge

    steps = steps or base.max_steps
    asked = {int(c) for c in targets}
    others = set(range(10)) - asked
    count = {c: max(per_class, math.ceil(MIN_FD_SAMPLES / len(asked if c in asked else others))) for c in range(10)}
    labels = [c for c in range(10) for _ in range(count[c])]
    seeds = [seed * 100_003 + EVAL_SEED + i for i in range(len(labels))]
    before, after = base.sample(labels, seeds, steps).clamp(-1, 1), tuned.sample(labels, seeds, steps).clamp(-1, 1)
    inside = [i for i, c in enumerate(labels) if c in asked]
    outside = [i for i, c in enumerate(labels) if c not in asked]
    judge.eval()
    hits = lambda x, idx: (judge(x[idx].float()).argmax(-1).cpu().numpy() == np.asarray(labels)[idx])  # noqa: E731
    row = {"style": style}
    if style is not None:
        row["style_rate"] = metrics.bootstrap_mean(style_judge.called(after[inside], style)).to_dict()
        row["style_rate_untuned"] = metrics.bootstrap_mean(style_judge.called(before[inside], style)).to_dict()
    row |= {"judge_accuracy": metrics.bootstrap_mean(hits(after, inside)).to_dict(),
           "drift_fd": metrics.frechet(fd_net, after[inside], before[inside], n_boot=n_boot).to_dict(),
           "other_digits": sorted(set(range(10)) - asked)}
    if outside:
        row["forgetting_accuracy"] = metrics.bootstrap_mean(
            hits(after, outside).astype(float) - hits(before, outside).astype(float)).to_dict()
        row["forgetting_fd"] = metrics.frechet(fd_net, after[outside], before[outside], n_boot=n_boot).to_dict()
    return row
