"""Next-scale prediction (VAR, Tian et al., NeurIPS 2024) and its subject-tuning losses (ARBooth, Chung et al., ICCV 2025).

Sampling (:func:`sample_tokens`) is the official ``autoregressive_infer_cfg``: one transformer pass
per scale with a KV cache; classifier-free guidance ramps with the scale, t_k = cfg * k / (K - 1) and
logits = (1 + t_k) cond - t_k uncond; then top-k / top-p sampling; the sampled map, embedded,
upsampled and mixed by phi_k, is added to f_hat, whose area-downsample to the next size is the next
scale's input. :func:`sample` decodes f_hat to images.

Training losses: :func:`token_loss` is the cross-entropy over all L tokens with per-token weights
(VAR: uniform 1 / L; ARBooth's scale-wise weighting: 1 on coarse scales, 0.5 on fine ones,
:func:`scale_weights`), and :func:`distill_loss` ARBooth's soft prior distillation,
sum_tok KL(softmax(z_T / T) || softmax(z_S / T)) / L.

Text: the studio's MiniLM caption encoding (:func:`studio.data.text.encode`: token embeddings, mask,
pooled). A subject prompt names the placeholder word (:data:`PLACEHOLDER`, "a sks square at the top
left"); :func:`with_placeholder` replaces that word's embeddings by a learned block, as ARBooth replaces
the T5 output of its placeholder by a learnable 4 x 2048 block.
"""

from __future__ import annotations

import copy
from typing import Iterator

import torch
import torch.nn.functional as F

from studio.core.device import make_generator
from studio.core.models import VARModel
from studio.core.sampling import Progress
from studio.data import text
from studio.nets.var import scale_slices

PLACEHOLDER = "sks"  # the subject's placeholder word ("a sks square"), DreamBooth's rare token


# ----------------------------------------------------------------------------------------------- text

def placeholder_span(encoder, prompt: str, word: str = PLACEHOLDER) -> tuple[int, int] | None:
    """Where ``word``'s word pieces sit among ``prompt``'s (with [CLS] at 0), or None if it is absent."""
    tok = encoder.tokenizer
    ids = tok(prompt)["input_ids"]
    piece = tok(word, add_special_tokens=False)["input_ids"]
    for s in range(len(ids) - len(piece) + 1):
        if ids[s:s + len(piece)] == piece:
            return s, s + len(piece)
    return None


def with_placeholder(encoded: dict[str, torch.Tensor], spans: list[tuple[int, int] | None],
                     block: torch.Tensor) -> dict[str, torch.Tensor]:
    """Replace each prompt's placeholder word pieces (``spans``) by ``block`` (n, D); the pooled
    embedding is recomputed over the new tokens. Differentiable in ``block``."""
    rows = []
    for i, span in enumerate(spans):
        n = int(encoded["encoder_attention_mask"][i].sum())
        h = encoded["encoder_hidden_states"][i, :n]
        if span is not None:
            h = torch.cat([h[:span[0]], block.to(h.dtype), h[span[1]:]], 0)
        rows.append(h)
    T = max(max(len(r) for r in rows), encoded["encoder_hidden_states"].shape[1])
    hidden = torch.stack([F.pad(r, (0, 0, 0, T - len(r))) for r in rows])
    mask = torch.stack([torch.cat([torch.ones(len(r)), torch.zeros(T - len(r))]) for r in rows])
    return {"encoder_hidden_states": hidden, "encoder_attention_mask": mask, "pooled": text.pool(hidden, mask)}


def cat_text(*conds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenate text conditions along the batch, padding the token axis to the longest."""
    T = max(c["encoder_hidden_states"].shape[1] for c in conds)
    hidden = [F.pad(c["encoder_hidden_states"], (0, 0, 0, T - c["encoder_hidden_states"].shape[1])) for c in conds]
    masks = [F.pad(c["encoder_attention_mask"], (0, T - c["encoder_attention_mask"].shape[1])) for c in conds]
    return {"encoder_hidden_states": torch.cat(hidden), "encoder_attention_mask": torch.cat(masks),
            "pooled": torch.cat([c["pooled"] for c in conds])}


def take(cond: dict[str, torch.Tensor], index) -> dict[str, torch.Tensor]:
    return {k: v[index] for k, v in cond.items()}


# ------------------------------------------------------------------------------------------- sampling

def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Keep the ``top_k`` largest logits (0: all) and the smallest set whose probability reaches
    ``top_p`` (0: all); the rest become -inf. (..., V); the official ``sample_with_top_k_top_p_``."""
    V = logits.shape[-1]
    if 0 < top_k < V:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=False)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative <= (1 - top_p)
        drop_sorted[..., -1] = False  # the most likely token always stays
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.no_grad()
def sample_tokens(vm: VARModel, cond: dict[str, torch.Tensor], uncond: dict[str, torch.Tensor] | None,
                  seeds: list[int], cfg: float = 1.5, top_k: int = 0, top_p: float = 0.0, temperature: float = 1.0,
                  transformer: torch.nn.Module | None = None,
                  previews: bool = True) -> Iterator[Progress | list[torch.Tensor]]:
    """Yield a Progress per scale (preview: the images decoded from f_hat so far, unless ``previews`` is
    False, as for token maps nobody looks at), then the K index maps (B, p_k, p_k). Image i draws from
    its own generator seeded ``seeds[i]``. ``uncond`` None: no guidance (cfg ignored). ``transformer``
    overrides ``vm.transformer`` (a tuned copy)."""
    net, vq = transformer or vm.transformer, vm.tokenizer
    scales, K, B = vq.scales, len(vq.scales), len(seeds)
    guided = uncond is not None and cfg != 0
    text = cat_text(cond, uncond) if guided else cond
    gens = [make_generator(s) for s in seeds]
    caches = [{} for _ in net.blocks]
    f_hat = torch.zeros(B, vq.config.latent_channels, scales[-1], scales[-1])
    inputs, indices = None, []
    for k, p in enumerate(scales):
        x_in = None if inputs is None else (torch.cat([inputs, inputs]) if guided else inputs)
        logits = net.step(k, x_in, text["encoder_hidden_states"], text["encoder_attention_mask"], text["pooled"],
                          caches).float()
        if guided:  # the official ramp: guidance grows from 0 at the coarsest scale to cfg at the finest
            t = cfg * k / max(K - 1, 1)
            logits = (1 + t) * logits[:B] - t * logits[B:]
        probs = filter_logits(logits / max(temperature, 1e-6), top_k, top_p).softmax(-1)
        idx = torch.stack([torch.multinomial(probs[i], 1, generator=gens[i])[:, 0] for i in range(B)])
        idx = idx.view(B, p, p)
        indices.append(idx)
        f_hat = f_hat + vq._upsampled(k, idx, scales[-1])
        if k + 1 < K:
            nxt = scales[k + 1]
            inputs = F.interpolate(f_hat, size=(nxt, nxt), mode="area").flatten(2).transpose(1, 2)
        yield Progress(k + 1, K, info={"scale": p}, preview=vq.decode(f_hat).clamp(-1, 1) if previews else None)
    yield indices


def sample(vm: VARModel, cond, uncond, seeds: list[int], **kwargs) -> Iterator[Progress | torch.Tensor]:
    """:func:`sample_tokens`, then the decoded images (B, 3, H, W) in [-1, 1] as the final item."""
    for item in sample_tokens(vm, cond, uncond, seeds, **kwargs):
        if isinstance(item, Progress):
            yield item
        else:
            with torch.no_grad():
                yield vm.tokenizer.decode(vm.tokenizer.f_hat(item)).clamp(-1, 1)


# ------------------------------------------------------------------------------------------- training

def teacher_logits(tokenizer: torch.nn.Module, net: torch.nn.Module, indices: list[torch.Tensor],
                   cond: dict[str, torch.Tensor]) -> torch.Tensor:
    """Teacher-forced logits (B, L, V) of the token maps ``indices`` under ``cond``."""
    with torch.no_grad():
        inputs = tokenizer.teacher_inputs(indices)
    return net(inputs, cond["encoder_hidden_states"], cond["encoder_attention_mask"], cond["pooled"])


def flat_indices(indices: list[torch.Tensor]) -> torch.Tensor:
    """K maps (B, p_k, p_k) -> (B, L)."""
    return torch.cat([i.flatten(1) for i in indices], 1)


def scale_weights(scales: tuple[int, ...], coarse: float = 1.0, fine: float = 0.5,
                  n_coarse: int | None = None) -> torch.Tensor:
    """Per-token weights (L,): ``coarse`` on the first ``n_coarse`` scales, ``fine`` on the rest.
    ARBooth weights its first 8 of 13 scales 1 and the last 5 0.5; ``n_coarse`` None keeps that
    share, round(8 / 13 * K)."""
    K = len(scales)
    n = round(8 / 13 * K) if n_coarse is None else n_coarse
    return torch.cat([torch.full((p * p,), coarse if k < n else fine) for k, p in enumerate(scales)])


def token_loss(logits: torch.Tensor, indices: list[torch.Tensor], weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum_tok w_tok CE_tok / L, averaged over the batch (w = 1: VAR's uniform loss)."""
    target = flat_indices(indices)
    ce = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").view_as(target)
    if weights is not None:
        ce = ce * weights.to(ce)[None]
    return ce.sum(1).mean() / target.shape[1]


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """ARBooth's soft prior distillation: sum_tok KL(softmax(z_T / T) || softmax(z_S / T)) / L, batch mean."""
    log_s = F.log_softmax(student / temperature, -1)
    log_t = F.log_softmax(teacher.detach() / temperature, -1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)
    return kl.sum(1).mean() / student.shape[1]


def per_scale_accuracy(logits: torch.Tensor, indices: list[torch.Tensor], scales: tuple[int, ...]) -> list[float]:
    """Share of tokens whose argmax logit is the true token, per scale (a training readout)."""
    hit = (logits.argmax(-1) == flat_indices(indices)).float()
    return [float(hit[:, s].mean()) for s in scale_slices(scales)]


def codebook_usage(indices: list[torch.Tensor]) -> list[int]:
    """How many distinct codes each scale uses in a batch of token maps (the collapse check)."""
    return [int(torch.unique(i).numel()) for i in indices]


# ------------------------------------------------------------------------------- saved subject models

def subject_state(tuned: VARModel, base: VARModel) -> dict[str, torch.Tensor]:
    """What a saved subject model stores: the transformer tensors that differ from the base's, and the
    placeholder block."""
    base_state = base.transformer.state_dict()
    state = {f"transformer.{k}": v.detach().cpu().contiguous() for k, v in tuned.transformer.state_dict().items()
             if not torch.equal(v, base_state[k])}
    if tuned.placeholder is not None:
        state["placeholder"] = tuned.placeholder.detach().cpu().contiguous()
    return state


def apply_subject_state(base: VARModel, state: dict[str, torch.Tensor], info: dict, name: str) -> VARModel:
    """A saved subject model rebuilt on a copy of ``base``'s transformer."""
    net = copy.deepcopy(base.transformer).float()
    own = {k.removeprefix("transformer."): v for k, v in state.items() if k.startswith("transformer.")}
    missing = set(own) - set(net.state_dict())
    if missing:
        raise ValueError(f"the saved subject names tensors the base lacks: {sorted(missing)[:3]}")
    net.load_state_dict({**net.state_dict(), **own})
    return VARModel(name, base.tokenizer, net.eval().requires_grad_(False), {**base.info, **info},
                    state.get("placeholder"))
