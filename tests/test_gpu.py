"""The GPU group (``pytest -m gpu``): the manager's accelerator placement, reduced-precision
sampling against fp32, and one action per tab, all on the real zoo on an accelerator.

Skipped where CUDA is absent, so ``make test`` on a CPU machine reports them as skipped. To check
the group's own code without a GPU, ``STUDIO_GPU_TESTS_DEVICE=cpu pytest -m gpu`` runs it on the
CPU (with bf16 in place of fp16: the same code path).
"""

from __future__ import annotations

import dataclasses
import importlib
import os

import pytest
import torch

from studio.core import loading
from studio.core.sampling import Progress, make_scheduler, run_to_end, sample
from studio.methods import METHODS, method
from tests.test_registry import contract_classes

DEVICE = os.environ.get("STUDIO_GPU_TESTS_DEVICE", "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                       reason="no CUDA device (set STUDIO_GPU_TESTS_DEVICE=cpu to run the group on the CPU)"),
]
REDUCED = torch.float16 if DEVICE == "cuda" else torch.bfloat16


@pytest.fixture(scope="module")
def gpu_manager():
    """The real zoo, lent on the accelerator."""
    from studio.core.manager import ModelManager

    m = ModelManager(device=DEVICE)
    m.register_zoo()
    return m


def test_the_manager_lends_models_on_the_accelerator_and_keeps_them_in_fp32(gpu_manager):
    with gpu_manager.use("digits-cond") as dm:
        params = [p for mod in loading.modules_of(dm) for p in mod.parameters()]
        assert params and all(p.device.type == torch.device(DEVICE).type for p in params)
        assert all(p.dtype == torch.float32 for p in params)
    assert all(row["in use"] == 0 for row in gpu_manager.status())


@torch.no_grad()
def test_reduced_precision_sampling_matches_fp32(gpu_manager):
    """The same seeds sampled in fp32 and under autocast (fp16 on CUDA): the images differ by little
    on average (a few steps of rounding, amplified by the sampler, move single pixels, not images)."""
    with gpu_manager.use("digits-cond") as dm:
        n = 16
        device = next(dm.unet.parameters()).device
        cond = {"class_labels": torch.arange(n, device=device) % 10}

        def draw(autocast: bool) -> torch.Tensor:
            fn = lambda x, t: dm.model_fn(x, t, cond)
            with torch.autocast(torch.device(DEVICE).type, dtype=REDUCED, enabled=autocast):
                out = run_to_end(sample(fn, make_scheduler("dpm++", dm.scheduler_config), (n, *dm.sample_shape),
                                        num_inference_steps=15, generator=torch.Generator().manual_seed(0),
                                        device=device))
            return out.float().clamp(-1, 1).cpu()

        full, reduced = draw(False), draw(True)
    assert torch.isfinite(reduced).all()
    gap = (full - reduced).abs().mean().item()
    assert gap < 0.05, f"mean |fp32 - {REDUCED}| = {gap:.3f} in [-1, 1] pixel units"


def _contract(method_id: str):
    file, _, cls = contract_classes()[method_id].partition("::")
    return getattr(importlib.import_module(f"tests.{file.removesuffix('.py')}"), cls)()


@pytest.mark.parametrize("method_id", [m.id for m in METHODS])
def test_one_action_per_tab_on_the_accelerator(gpu_manager, method_id):
    """Each method's contract parameters (small, fast) and inputs, on the real zoo on the accelerator:
    progress, then one result, and every lease given back."""
    contract = _contract(method_id)
    params = contract.params()
    models = set(method(method_id).models(gpu_manager))
    if getattr(params, "model", None) is not None and params.model not in models:
        params = dataclasses.replace(params, model=method(method_id).Params().model)
    *progress, result = method(method_id).run(params, gpu_manager, **contract.inputs())
    assert progress and all(isinstance(p, Progress) for p in progress)
    assert not isinstance(result, Progress) and result.parameters
    assert all(row["in use"] == 0 for row in gpu_manager.status())
