"""Conditions for a model's UNet, built the same way for every method.

A *condition* is the dict of UNet keyword tensors that :mod:`studio.core.guidance` stacks and
batches: ``{"class_labels": (B,)}`` for class models; for text models either the zoo form
(MiniLM tokens + mask + pooled, from the manager's ``text-encoder``) or a real pipeline's own
CLIP encoding (:class:`studio.core.models.LatentDiffusionModel`).
"""

from __future__ import annotations

from typing import Sequence

from studio import lazy
from studio.core.models import DiffusionModel
from studio.data import text

torch = lazy.load("torch")


def text_conditions(dm: DiffusionModel, manager, prompts: Sequence[str],
                    max_tokens: int = text.MAX_TOKENS) -> list[dict[str, torch.Tensor]]:
    """One condition (batch 1) per prompt, encoded together so they stack. Raises PromptError."""
    own = getattr(dm, "encode_prompts", None)
    if own is not None:
        emb = own(list(prompts))
    else:
        with manager.use("text-encoder") as enc:
            e = text.encode(enc, list(prompts), max_tokens=max_tokens)
        emb = zoo_text_kwargs(e)
    return [{k: v[i:i + 1] for k, v in emb.items()} for i in range(len(prompts))]


def zoo_text_kwargs(e: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """:func:`studio.data.text.encode`'s output as the zoo text UNet's keyword tensors."""
    return {"encoder_hidden_states": e["encoder_hidden_states"],
            "encoder_attention_mask": e["encoder_attention_mask"], "class_labels": e["pooled"]}


def repeat(cond: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """A batch-1 condition repeated to batch ``n``."""
    return {k: v.repeat(n, *[1] * (v.ndim - 1)) for k, v in cond.items()}
