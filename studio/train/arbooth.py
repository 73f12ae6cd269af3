"""Subject-driven tuning of a VAR model as ARBooth's code does it (Chung et al., ICCV 2025; ``booth_trainer_final.py``).

Per iteration, on ``batch`` subject images (their token maps, computed once):

1. instance step: the student's teacher-forced logits under the instance prompt ("a sks square",
   the placeholder word's embeddings replaced by a learned block of ``placeholder_tokens`` vectors,
   zero at the start), ``L_inst = sum_tok w_tok CE_tok / L`` with the scale-wise weights
   (:func:`studio.core.var.scale_weights`: 1 on the coarse scales, 0.5 on the fine ones); an optimizer step;
2. prior-distillation step (``prior``): the frozen original model samples class-prompt token maps
   ("a square"; no guidance, temperature 0.5, top-p 0.97 and top-k a fifth of the codebook, the
   official 900 of 4096), the student is fed them under the class prompt and pulled towards the
   teacher's logits, ``L_reg = lambda * sum_tok KL(softmax(z_T) || softmax(z_S)) / L`` with
   lambda = 0.5, T = 1; a second, separate optimizer step.

Only the cross-attention and FFN layers and the placeholder block train (``layers="ca_ffn"``,
selective layer tuning); ``layers="all"`` is full fine-tuning. :data:`VARIANTS` holds the paper's
method, naive full fine-tuning and each part switched off on the same path, so the benchmark and
the tab compare them side by side.

Measured (``benchmarks/bench_subject.py``, docs/subject.md): full fine-tuning halves the diversity and drifts
furthest; prior distillation keeps the diversity and, sampled without guidance, the class prompt at chance level;
at guidance 4 every variant drifts; coarse-heavy weights do not raise subject fidelity here; every variant loses
the prompt's region words.

Deviations: a tiny VAR on the shapes world instead of Infinity-2B; token indices instead of
Infinity's bitwise tokens, hence no bitwise self-correction; MiniLM caption embeddings instead of
Flan-T5; learning rate and iterations CPU-sized and chosen on the SELECTION subjects
(``benchmarks/bench_subject.py``); AdamW betas (0.9, 0.97) and a constant lr as the official script.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Literal

import numpy as np
import torch

from studio.core import var as V
from studio.core.device import make_generator
from studio.core.models import VARModel
from studio.core.sampling import Progress, run_to_end


@dataclass(frozen=True)
class Variant:
    layers: Literal["ca_ffn", "all"] = "ca_ffn"         # selective tuning (ARBooth) or full fine-tuning
    placeholder: bool = True                            # a learned block replaces the placeholder word
    prior: bool = True                                  # prior distillation towards the frozen model
    weights: Literal["coarse", "uniform", "fine"] = "coarse"  # coarse 1 / fine 0.5; uniform; reversed


VARIANTS: dict[str, Variant] = {
    "arbooth": Variant(),
    "full": Variant(layers="all", placeholder=False, prior=False, weights="uniform"),  # naive fine-tuning
    "no-prior": Variant(prior=False),
    "all-layers": Variant(layers="all"),
    "uniform-weights": Variant(weights="uniform"),
    "fine-weights": Variant(weights="fine"),
    "no-placeholder": Variant(placeholder=False),
}
PLACEHOLDER_TOKENS = 4
LAMBDA, DISTILL_T = 0.5, 1.0
PRIOR_SAMPLING = {"cfg": 0.0, "temperature": 0.5, "top_p": 0.97}  # official: cfg 1 (none), tau 0.5, top-k 900 / 4096
BETAS = (0.9, 0.97)


@dataclass
class TuneSettings:
    iterations: int = 100  # iterations and lr chosen on the selection subjects (benchmarks/bench_subject.py)
    lr: float = 3e-4
    batch: int = 2
    seed: int = 0


def instance_prompt(shape: str) -> str:
    return f"a {V.PLACEHOLDER} {shape}"


def weights_for(variant: Variant, scales: tuple[int, ...]) -> torch.Tensor | None:
    if variant.weights == "uniform":
        return None
    w = V.scale_weights(scales)
    return w if variant.weights == "coarse" else 1.5 - w  # fine: coarse 0.5, fine 1


def trainable(net: torch.nn.Module, layers: str) -> list[torch.nn.Parameter]:
    """Switch gradients on for the tuned layers only; return them."""
    groups = net.layer_groups()
    names = set(groups["cross_attn"] + groups["ffn"]) if layers == "ca_ffn" else {n for n, _ in net.named_parameters()}
    params = []
    for name, p in net.named_parameters():
        p.requires_grad_(name in names)
        if name in names:
            params.append(p)
    return params


def tune(vm: VARModel, encoder, subject_images: torch.Tensor, shape: str, variant: Variant,
         settings: TuneSettings = TuneSettings(), stop: Callable[[], bool] | None = None
         ) -> Iterator[Progress | VARModel]:
    """Tune a copy of ``vm``'s transformer on ``subject_images`` (N, 3, H, W) in [-1, 1]; yield a
    Progress per iteration (info: the two losses), then the tuned model (``placeholder`` set when the
    variant learns one). ``encoder``: the MiniLM text encoder. ``stop``: polled each iteration."""
    from studio.data import text

    t0 = time.perf_counter()
    vq, teacher = vm.tokenizer, vm.transformer
    torch.manual_seed(settings.seed)
    student = copy.deepcopy(teacher).float().train()
    params = trainable(student, variant.layers)
    block = torch.nn.Parameter(torch.zeros(PLACEHOLDER_TOKENS, text.EMBED_DIM)) if variant.placeholder else None
    opt = torch.optim.AdamW(params + ([block] if block is not None else []), lr=settings.lr, betas=BETAS,
                            weight_decay=0.0)
    inst_prompt, cls_prompt = instance_prompt(shape), f"a {shape}"
    enc = text.encode(encoder, [inst_prompt, cls_prompt])
    span = V.placeholder_span(encoder, inst_prompt)
    inst_plain, cls_cond = V.take(enc, [0]), V.take(enc, [1])
    with torch.no_grad():
        tokens = vq.tokenize(subject_images)
    weights = weights_for(variant, vq.scales)
    k_top = max(1, vq.config.codebook_size // 5)
    rng = np.random.default_rng(settings.seed)
    log = {"instance": [], "prior": []}
    for it in range(settings.iterations):
        if stop is not None and stop():
            break
        pick = rng.choice(len(subject_images), size=min(settings.batch, len(subject_images)), replace=False)
        idx = [t[pick] for t in tokens]
        cond = V.with_placeholder(inst_plain, [span], block) if block is not None else inst_plain
        cond = V.take(cond, [0] * len(pick))
        loss = V.token_loss(V.teacher_logits(vq, student, idx, cond), idx, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log["instance"].append(loss.item())
        if variant.prior:
            seeds = [int(s) for s in rng.integers(0, 2**31, size=len(pick))]
            prior_idx = run_to_end(V.sample_tokens(vm, V.take(cls_cond, [0] * len(pick)), None, seeds,
                                                     top_k=k_top, transformer=teacher, previews=False,
                                                     **{k: v for k, v in PRIOR_SAMPLING.items() if k != "cfg"}))
            c = V.take(cls_cond, [0] * len(pick))
            with torch.no_grad():
                z_t = V.teacher_logits(vq, teacher, prior_idx, c)
            reg = LAMBDA * V.distill_loss(V.teacher_logits(vq, student, prior_idx, c), z_t, DISTILL_T)
            opt.zero_grad(set_to_none=True)
            reg.backward()
            opt.step()
            log["prior"].append(reg.item())
        yield Progress(it + 1, settings.iterations, info={"instance": log["instance"][-1],
                                                          "prior": log["prior"][-1] if log["prior"] else None})
    student.eval().requires_grad_(False)
    n_params = sum(p.numel() for p in params) + (block.numel() if block is not None else 0)
    info = {**vm.info, "subject_of": vm.name, "variant": asdict(variant), "settings": asdict(settings),
            "shape": shape, "trainable_params": n_params, "iterations_done": len(log["instance"]),
            "tune_seconds": round(time.perf_counter() - t0, 2),
            "final_losses": {k: (float(np.mean(v[-10:])) if v else None) for k, v in log.items()}}
    yield VARModel(f"{vm.name}+subject", vq, student, info, block.detach().clone() if block is not None else None)
