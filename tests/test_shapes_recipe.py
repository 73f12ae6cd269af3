"""The shapes model's recipe and its instruments: the background measure, the judge's
augmentation, min-SNR weights, and a run that continues from the shipped weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from studio.core import metrics
from studio.data import shapes
from studio.train.common import ZOO_DIR


@pytest.fixture(scope="module")
def renders():
    return shapes.to_model_range(shapes.make_dataset(64, 31)[0])


def test_the_background_measure_reads_real_renders_as_black_and_finds_a_tint_and_grain(renders):
    real = metrics.background_stats(renders)
    assert np.all(np.isfinite(real["mean"]))
    assert np.mean(real["mean"]) < -0.98 and np.mean(real["grain"]) < 0.05
    gen = torch.Generator().manual_seed(0)
    rough = (renders + 0.2).clamp(-1, 1) + 0.1 * torch.randn(renders.shape, generator=gen)
    got = metrics.background_stats(rough)
    assert abs(np.mean(got["mean"]) - (np.mean(real["mean"]) + 0.2)) < 0.02
    assert 0.08 < np.mean(got["grain"]) < 0.12
    # an object filling the frame leaves no background pixel: NaN, not a made-up figure
    assert np.isnan(metrics.background_stats(torch.ones(1, 3, 8, 8))["mean"][0])


def test_the_judges_augmentation_covers_offsets_tints_blur_and_grain_and_keeps_the_shape(renders):
    from studio.train import judges

    out = judges.augment_shapes(renders.clone(), torch.Generator().manual_seed(1))
    assert out.shape == renders.shape
    lifted = metrics.background_stats(out.clamp(-1, 1))["mean"]
    assert np.nanmax(lifted) > -0.8 and np.nanmin(lifted) < -0.95  # offsets from none to strong
    again = judges.augment_shapes(renders.clone(), torch.Generator().manual_seed(1))
    assert torch.equal(out, again)  # seeded
    flat = torch.zeros(2, 3, 5, 5)
    flat[:, :, 2, 2] = 1.0
    b = judges.blur(flat, torch.tensor([0.5, 0.9]))
    assert torch.allclose(b.sum((2, 3)), flat.sum((2, 3)), atol=1e-5)  # a blur keeps the mass
    assert b[1, 0, 2, 2] < b[0, 0, 2, 2] < 1.0  # the wider sigma spreads more
    p = judges.perturb(renders, offset=0.18, grain=0.0)
    assert abs(np.mean(metrics.background_stats(p)["mean"]) - (-0.82)) < 0.02


def test_min_snr_weights_follow_diffusers_training_scripts():
    from diffusers.training_utils import compute_snr

    from studio.train.diffusion import loss_weights, noise_scheduler

    t = torch.tensor([0, 100, 500, 999])
    eps = noise_scheduler()
    assert loss_weights(eps, t, None) is None
    snr = compute_snr(eps, t)
    w = loss_weights(eps, t, 5.0)
    assert torch.allclose(w, torch.clamp(snr, max=5.0) / snr)
    assert w[0] < 0.01 and w[-1] == pytest.approx(1.0)  # low noise is down-weighted, high noise kept
    v = noise_scheduler("v_prediction", zero_snr=True)
    assert float(v.alphas_cumprod[-1]) < 1e-6  # zero terminal SNR
    wv = loss_weights(v, t, 5.0)
    assert torch.all(wv <= 1.0) and torch.all(wv >= 0.0)


def test_a_shapes_variant_continues_from_the_shipped_weights_and_resumes_its_own_checkpoint(tmp_path, monkeypatch):
    from studio.core.loading import load_zoo, read_manifest
    from studio.train import common, diffusion

    monkeypatch.setattr(common, "RUNS_DIR", tmp_path)
    start = int(read_manifest()["shapes-t2i"]["train_steps"])
    recipe = diffusion.ShapesRecipe(steps=start + 100, variant="v")  # a longer schedule than the shipped run's
    recipe.batch_size = 2
    assert recipe.prediction_type == "v_prediction" and recipe.info["prediction_type"] == "v_prediction"
    assert recipe.scheduler().config.clip_sample is False
    before = {k: v.clone() for k, v in recipe.make_model().state_dict().items()}
    result = diffusion.train(recipe, resume_from_zoo=True, until=start + 1, export=False)
    assert result["step"] == start + 1 and result["resumed_from_zoo_at"] == start
    state = json.loads((tmp_path / "shapes-t2i-v" / "state.json").read_text())
    assert state["step"] == start + 1 and state["restart"] == start
    # the steps before the restart were trained with the shipped model's objective, and that is kept
    assert result["objective_before_resume"] == state["restart_objective"] == diffusion.shipped_objective("shapes-t2i")
    again = diffusion.train(recipe, resume_from_zoo=True, until=start + 2, export=False)
    assert again["step"] == start + 2  # from runs/, not from the zoo a second time
    assert again["objective_before_resume"] == result["objective_before_resume"]
    idle = diffusion.train(recipe, until=start + 2, export=False)  # nothing left to train: the loss is kept
    assert idle["step"] == start + 2 and idle["loss"] == again["loss"] is not None
    from safetensors.torch import load_file

    ema = load_file(tmp_path / "shapes-t2i-v" / "ema.safetensors")
    shipped = {k: v.float() for k, v in load_zoo("shapes-t2i").unet.state_dict().items()}
    assert max(float((ema[k] - shipped[k]).abs().max()) for k in shipped) < 0.05  # near the shipped weights
    assert any(not torch.equal(ema[k], before[k]) for k in before)  # not a random start
    with pytest.raises(ValueError, match="unknown variant"):
        diffusion.ShapesRecipe(variant="bigger")


def test_the_shipped_shapes_judge_reads_clean_and_rough_renders_and_sees_no_phantoms():
    """Measured on held-out renders (seeds no training batch used): the judge trained with offsets,
    tints, blur and grain reads every object and no phantom, clean or lifted by +0.18 with grain
    0.085 (the first judge saw phantoms in 6% of empty cells there)."""
    from studio.core.loading import load_zoo
    from studio.train import judges

    net = load_zoo("judge-shapes")
    imgs, scenes = shapes.make_dataset(300, judges.SHAPES_TEST_SEED + 1)
    x = shapes.to_model_range(imgs)
    clean = judges.read_accuracy(net, x, scenes)
    rough = judges.read_accuracy(net, judges.perturb(x, **judges.PERTURBED, seed=5), scenes)
    assert clean["object_accuracy"] >= 0.98 and clean["empty_cell_accuracy"] >= 0.99
    assert rough["object_accuracy"] >= 0.97 and 1 - rough["empty_cell_accuracy"] <= 0.01


def test_the_joined_caption_fine_tune_keeps_the_shipped_models_objective(tmp_path):
    from studio.train.diffusion import ShapesJoinedRecipe, ShapesRecipe, noise_scheduler, shipped_objective

    # what a zoo folder records is read back: v + zero SNR, no clamp, min-SNR 5 ...
    noise_scheduler("v_prediction", zero_snr=True, clip_sample=False).save_pretrained(tmp_path / "v" / "scheduler")
    noise_scheduler().save_pretrained(tmp_path / "eps" / "scheduler")
    (tmp_path / "MANIFEST.json").write_text(json.dumps({"v": {"objective": {"snr_gamma": 5.0}}, "eps": {}}))
    assert shipped_objective("v", tmp_path) == {"prediction_type": "v_prediction", "zero_snr": True,
                                                "clip_sample": False, "snr_gamma": 5.0}
    # ... and a model exported before objectives were recorded trained with the plain MSE
    assert shipped_objective("eps", tmp_path) == {"prediction_type": "epsilon", "zero_snr": False,
                                                  "clip_sample": True, "snr_gamma": None}
    joined, shipped = ShapesJoinedRecipe(steps=1), shipped_objective("shapes-t2i")
    assert {k: getattr(joined, k) for k in shipped} == shipped
    assert joined.run_name == "shapes-t2i-joined" and joined.init_from == "shapes-t2i"
    zoo_config = json.loads((ZOO_DIR / "shapes-t2i" / "scheduler" / "scheduler_config.json").read_text())
    config = joined.scheduler().config
    assert all(config[k] == zoo_config[k] for k in ("prediction_type", "rescale_betas_zero_snr", "clip_sample"))
    default = ShapesRecipe()  # the recipe's own default is v-prediction with zero-terminal-SNR betas
    assert (default.prediction_type, default.zero_snr, default.snr_gamma) == ("v_prediction", True, None)
    assert default.scheduler().config.rescale_betas_zero_snr is True


def test_a_fine_tune_resumes_only_from_a_run_of_the_shipped_base(tmp_path, monkeypatch):
    from studio.train import common, diffusion

    monkeypatch.setattr(common, "RUNS_DIR", tmp_path)
    recipe = diffusion.ShapesJoinedRecipe(steps=2)
    recipe.batch_size = 2
    assert diffusion.train(recipe, until=1, export=False)["step"] == 1
    path = tmp_path / "shapes-t2i-joined" / "state.json"
    state = json.loads(path.read_text())
    shipped = common.read_manifest()["shapes-t2i"]["files"]["model/diffusion_pytorch_model.safetensors"]["sha256"]
    assert state["init_sha"] == shipped
    assert diffusion.train(recipe, until=2, export=False)["step"] == 2
    path.write_text(json.dumps({**json.loads(path.read_text()), "init_sha": "0" * 64}))  # a run of an older base
    with pytest.raises(RuntimeError, match="fine-tune of another shapes-t2i"):
        diffusion.train(recipe, export=False)
