"""The Generate method's contract: progress then a result that carries its parameters; clear errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from studio.core.params import ParamError, coerce
from studio.core.results import ImageResult, read_png_parameters
from studio.core.sampling import Progress
from studio.errors import UserError
from studio.methods import generate
from tests.contract import MethodContract


def run(manager, **kw):
    return list(generate.run(generate.Params(**{"steps": 3, "n_images": 2, **kw}), manager))


@pytest.mark.parametrize("model", ["digits-cond", "shapes-t2i"])
def test_progress_then_a_result_with_parameters_in_the_png(tiny_manager, model):
    items = run(tiny_manager, model=model, seed=42, preview_every=1)
    progress, result = items[:-1], items[-1]
    assert [p.step for p in progress] == [1, 2, 3] and all(isinstance(p, Progress) for p in progress)
    assert progress[0].preview is not None
    assert isinstance(result, ImageResult) and len(result.images) == 2 and result.seeds == [42, 43]
    assert result.images[0].size == (128, 128)
    meta = read_png_parameters(result.png(1))
    assert meta["model"] == model and meta["seed"] == 42 and meta["image_seed"] == 43 and meta["steps"] == 3
    assert ("prompt" in meta) == (model == "shapes-t2i") and ("digit" in meta) == (model == "digits-cond")


def test_same_seed_same_images_and_one_image_remade_alone(tiny_manager):
    a = run(tiny_manager, model="digits-cond", seed=7, scheduler="ddpm")[-1]
    b = run(tiny_manager, model="digits-cond", seed=7, scheduler="ddpm")[-1]
    c = run(tiny_manager, model="digits-cond", seed=8, scheduler="ddpm", n_images=1)[-1]
    assert torch.equal(a.tensors, b.tensors)
    assert torch.allclose(a.tensors[1], c.tensors[0], atol=1e-5)


def test_random_seed_is_reported(tiny_manager):
    r1 = run(tiny_manager, model="digits-cond", randomize_seed=True, n_images=1)[-1]
    r2 = run(tiny_manager, model="digits-cond", randomize_seed=True, n_images=1)[-1]
    assert r1.parameters["seed"] != r2.parameters["seed"]
    again = run(tiny_manager, model="digits-cond", seed=r1.parameters["seed"], n_images=1)[-1]
    assert torch.equal(again.tensors, r1.tensors)


@pytest.mark.parametrize("kw,message", [
    ({"model": "shapes-t2i", "prompt": "   "}, "prompt is empty"),
    ({"model": "shapes-t2i", "prompt": "x" * 500}, "limit is 200"),
    ({"model": "shapes-t2i", "prompt": " ".join("abcdefghijklmnopqrstuvwxyz")}, "word pieces"),
    ({"steps": 0}, "Steps must be between 1 and 200"),
    ({"steps": 1000}, "Steps must be between"),
    ({"n_images": 99}, "Images must be between"),
    ({"guidance": float("nan")}, "finite"),
    ({"scheduler": "nope"}, "Scheduler must be one of"),
    ({"scheduler": "flow-euler"}, "flow-matching"),
    ({"model": "nope"}, "unknown model 'nope'"),
    ({"model": "judge-digits"}, "unknown model"),
    ({"digit": 12}, "Digit must be between 0 and 9"),
])
def test_bad_input_gets_a_clear_message(tiny_manager, kw, message):
    with pytest.raises(UserError, match=message):
        run(tiny_manager, **{"model": "digits-cond", **kw})
    assert all(r["in use"] == 0 for r in tiny_manager.status())  # nothing left leased


def test_gui_values_are_coerced_by_name():
    p = coerce(generate.Params, {"steps": 12.0, "n_images": 3.0, "guidance": 2, "seed": "5"})
    assert (p.steps, p.n_images, p.guidance, p.seed) == (12, 3, 2.0, 5)
    with pytest.raises(ParamError, match="whole number"):
        coerce(generate.Params, {"steps": 2.5})
    with pytest.raises(ParamError, match="number"):
        coerce(generate.Params, {"seed": "abc"})
    with pytest.raises(ParamError, match="unknown parameter"):
        coerce(generate.Params, {"stepz": 3})
    for f in dataclasses.fields(generate.Params):
        assert f.metadata["label"], f.name  # every field declares its label for the GUI


class TestGenerateContract(MethodContract):
    method_id = "generate"
    bad = [({"steps": 0}, "Steps"), ({"model": "nope"}, "unknown model"), ({"scheduler": "flow-euler"}, "flow")]

    @pytest.fixture
    def manager(self, tiny_manager):
        return tiny_manager

    def params(self):
        return generate.Params(model="digits-cond", steps=2, n_images=2, preview_every=1, seed=3)


def test_the_tabs_default_sampler_is_the_default_models_own():
    """Generate opens on shapes-t2i with the sampler its zoo entry names (chosen by
    bench_shapes_recipe.py --samplers); switching models applies each entry's own."""
    import json

    from studio.core.loading import ZOO_DIR

    assert generate.Params.model == "shapes-t2i"
    for name in ("shapes-t2i", "digits-cond"):
        info = json.loads((ZOO_DIR / name / "studio.json").read_text())
        assert {"default_scheduler", "default_steps"} <= info.keys(), name
    shapes_info = json.loads((ZOO_DIR / "shapes-t2i" / "studio.json").read_text())
    assert (generate.Params.scheduler, generate.Params.steps) == (shapes_info["default_scheduler"],
                                                                  shapes_info["default_steps"])
