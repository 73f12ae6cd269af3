"""The shipped zoo: complete, small, intact, loadable, and as good as its MANIFEST says."""

from __future__ import annotations

import pytest
import torch

from studio.core import loading, metrics
from studio.core.loading import DiffusionModel
from studio.evaluate import sample_batch
from studio.nets.classifiers import ExpertBank, GuideNet
from studio.train import ALL

MANIFEST = loading.read_manifest()


def test_every_recipe_has_a_zoo_entry_within_the_size_budget():
    assert set(ALL) <= set(MANIFEST), sorted(set(ALL) - set(MANIFEST))
    total = sum(e["bytes"] for e in MANIFEST.values())
    assert total <= 40 * 2**20, f"zoo is {total / 2**20:.1f} MiB"
    for name, entry in MANIFEST.items():
        assert entry["recipe"] == f"studio train {name}" and entry["machine"] and entry["train_seconds"] > 0
        assert all(f.endswith((".json", ".safetensors")) for f in entry["files"]), entry["files"]


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_each_entry_passes_its_checksums_and_loads(zoo_manager, name):
    with zoo_manager.use(name) as obj:
        if name in ("digits-cond", "shapes-t2i"):
            assert isinstance(obj, DiffusionModel) and obj.unet.dtype == torch.float32
            assert MANIFEST[name]["quality"]["sweep"], "run `studio eval` to record the quality figures"
        elif MANIFEST[name]["kind"] == "judge":
            assert hasattr(obj, "features")
        elif MANIFEST[name]["kind"] == "classifier":
            assert isinstance(obj, GuideNet) and not any(p.requires_grad for p in obj.parameters())
        else:
            assert MANIFEST[name]["kind"] == "experts" and isinstance(obj, ExpertBank) and len(obj.experts) == 5


def test_judge_bars():
    assert MANIFEST["judge-digits"]["quality"]["test_accuracy"] >= 0.97
    assert MANIFEST["judge-shapes"]["quality"]["object_accuracy"] >= 0.95


def test_digits_model_draws_the_asked_class(zoo_manager):
    """A small live check of the shipped digits model (the full sweep is in MANIFEST / README)."""
    labels = torch.arange(10).repeat(3)
    with zoo_manager.use("digits-cond") as dm, zoo_manager.use("judge-digits") as judge:
        x = sample_batch(dm, {"class_labels": labels}, {"class_labels": torch.full_like(labels, 10)},
                         scale=MANIFEST["digits-cond"]["quality"]["best_guidance"], n=len(labels), seed=99, steps=10)
        acc = metrics.digits_accuracy(judge, x, labels.numpy())
    assert x.min() >= -1.001 and x.max() <= 1.001
    assert acc.value >= 0.8, acc
