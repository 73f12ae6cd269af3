"""LoRA (Hu et al., ICLR 2022), the studio's one implementation: peft's LoRA layers injected into
the network itself (``inject_adapter_in_model``), so the network keeps its own class and call.

A LoRA layer adds ``(alpha / r) B A`` to a frozen weight: ``A`` maps to ``r`` channels, ``B`` back
(for a convolution ``A`` is a k x k convolution to ``r`` channels and ``B`` a 1 x 1 one). ``B``
starts at zero, so a fresh adapter is the base network exactly. Two users:

* Tune (PSO): :func:`with_lora` on a diffusion UNet's :func:`lora_targets`, alpha = rank and
  Gaussian ``A`` as the official PSO scripts; :func:`adapter_off` gives the reference model,
  :func:`lora_state` / :func:`load_lora` save and load the factors alone (``adapter.safetensors``).
* Guide (PPAP): :func:`studio.nets.classifiers.make_lora` on a ResNet classifier (rank 16,
  alpha 8, peft's default init), then :func:`merged` folds each expert into plain weights.

The adapter is always named :data:`ADAPTER` (peft's default name). Factors saved by
:func:`lora_state` carry no adapter name; a network's ``state_dict()`` names it
(``conv1.lora_A.default.weight``).
"""

from __future__ import annotations

import contextlib
import copy

from studio import lazy
from studio.threads import building

torch = lazy.load("torch")

ADAPTER = "default"


def lora_targets(unet: torch.nn.Module) -> list[str]:
    """A diffusion UNet's LoRA sites: the official PSO scripts' attention projections when the
    UNet has attention, else every ResNet convolution (the digits UNet has no attention).
    (PPAP's sites in a classifier: :func:`studio.nets.classifiers.lora_targets`.)"""
    names = {n.rsplit(".", 1)[-1] for n, _ in unet.named_modules()}
    if "to_q" in names:
        return ["to_q", "to_k", "to_v", "to_out.0"]
    return ["conv1", "conv2"]


def with_lora(net: torch.nn.Module, rank: int, seed: int | None = 0, *, alpha: float | None = None,
              targets: list[str] | None = None, init: bool | str = "gaussian") -> torch.nn.Module:
    """A deep copy of ``net`` (float32, frozen) with a LoRA adapter of ``rank`` on ``targets``
    (default :func:`lora_targets`); only the LoRA factors train. The original is never modified.

    ``alpha`` defaults to ``rank`` (scaling 1); ``init`` is peft's ``init_lora_weights`` ("gaussian":
    ``A ~ N(0, 1/r)``, as the official PSO scripts; True: peft's Kaiming-uniform ``A``); ``seed``
    seeds the global RNG before ``A`` is drawn (None: draw from it as it stands).
    """
    from peft import LoraConfig, inject_adapter_in_model

    copied = copy.deepcopy(net).float().requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, init_lora_weights=init,
                        target_modules=targets if targets is not None else lora_targets(copied))
    with building(seed):  # the factors' init must not meet another thread's model load (studio.threads)
        copied = inject_adapter_in_model(config, copied, adapter_name=ADAPTER)
    copied.lora_rank = rank
    return copied


@contextlib.contextmanager
def adapter_off(net: torch.nn.Module):
    """The base network: every LoRA layer of ``net`` switched off inside the block."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in net.modules() if isinstance(m, BaseTunerLayer)]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield net
    finally:
        for m in layers:
            m.enable_adapters(True)


def trainable(net: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The LoRA factors of ``net``, switched to ``requires_grad``."""
    params = [p for n, p in net.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return params


def lora_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA factors alone, on the CPU, keys without the adapter name (``...conv1.lora_A.weight``)."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous()
            for k, v in get_peft_model_state_dict(net, adapter_name=ADAPTER).items()}


def load_lora(net: torch.nn.Module, state: dict[str, torch.Tensor], rank: int) -> torch.nn.Module:
    """``net`` copied and given a LoRA adapter holding ``state`` (from :func:`lora_state`)."""
    from peft.utils import set_peft_model_state_dict

    copied = with_lora(net, rank)
    result = set_peft_model_state_dict(copied, state, adapter_name=ADAPTER)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"the adapter does not fit this model: {len(result.unexpected_keys)} unknown tensors")
    return copied.eval()


def merged(net: torch.nn.Module) -> torch.nn.Module:
    """``net`` with every LoRA layer folded into its base layer (``W + (alpha / r) B A``) and the
    adapter removed, in place: the network then costs what the base costs."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(net.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent), child, module.get_base_layer())
    return net
