"""Tune's other methods, piece by piece: which weights train (LoRA, SaRA's sparse entries, full),
R0's rewards and generator, Diffusion-DRO's buffer and hinge, the comparison's measurements, and
saved tuned models of every kind."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from tests.conftest import tiny_digits_unet

from studio.core import adapters
from studio.core.models import DiffusionModel
from studio.core.params import ParamError
from studio.data import digits
from studio.methods import tune
from studio.nets.sparse import apply_sparse
from studio.train import boot, dro, r0, tuning


def tiny_fewstep():
    torch.manual_seed(0)
    return DiffusionModel("digits-fewstep", tiny_digits_unet(), boot.scheduler_config(), "sample", "class",
                          {"null_class": 10, "few_step": list(boot.DISTILLED), "domain": "digits"})


def batch(n=4):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 16, 16, generator=g), torch.tensor([999, 749, 499, 249][:n]), torch.arange(n)


def out(net, x, t, c):
    return net(x, t, class_labels=c).sample


# --- which weights train -------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["lora", "sara", "full"])
def test_every_kind_starts_as_the_base_and_never_touches_it(kind):
    dm = tiny_fewstep()
    before = {k: v.clone() for k, v in dm.unet.state_dict().items()}
    x, t, c = batch()
    w = tuning.make_weights(kind, dm.unet, rank=2, fraction=0.2)
    assert torch.equal(out(w.net, x, t, c), out(dm.unet, x, t, c))
    opt = torch.optim.AdamW(w.parameters(), lr=1e-2)
    out(w.net, x, t, c).pow(2).mean().backward()
    opt.step()
    assert not torch.equal(out(w.net, x, t, c), out(dm.unet, x, t, c))
    assert all(torch.equal(v, dm.unet.state_dict()[k]) for k, v in before.items())
    with torch.no_grad(), w.reference() as ref:
        assert torch.equal(out(ref, x, t, c), out(dm.unet, x, t, c))  # the reference is the untuned network


def test_sara_trains_only_the_smallest_share_of_each_tensor_with_sparse_optimizer_state():
    dm = tiny_fewstep()
    w = tuning.make_weights("sara", dm.unet, fraction=0.1, rank_weight=0.0, progressive=False)
    base = dict(dm.unet.named_parameters())
    for name, entries in w.entries.items():
        p = base[name].detach().abs().flatten()
        chosen = torch.zeros_like(p, dtype=torch.bool)
        chosen[entries.index] = True
        assert abs(chosen.float().mean().item() - 0.1) <= 0.05 or p.numel() < 20
        if chosen.any() and (~chosen).any():
            assert p[chosen].max() <= p[~chosen].min()  # the selected entries are the smallest ones
    x, t, c = batch()
    opt = torch.optim.AdamW(w.parameters(), lr=1e-2)
    out(w.net, x, t, c).pow(2).mean().backward()
    opt.step()
    assert tuning.optimizer_bytes(opt) == 8 * w.count  # two float32 moments per trainable entry, no more
    assert w.count < 0.12 * sum(p.numel() for p in dm.unet.parameters())
    merged = dict(tuning.plain_network(w).named_parameters())
    changed = sum(int((merged[n] != base[n]).sum()) for n in base)
    assert 0 < changed <= w.count  # nothing outside the selected entries moved


def test_sara_keeps_the_sign_of_small_weights_and_the_release_abs_init_changes_the_model():
    dm = tiny_fewstep()
    x, t, c = batch()
    keep = tuning.make_weights("sara", dm.unet, fraction=0.2)
    flipped = tuning.make_weights("sara", dm.unet, fraction=0.2, keep_sign=False)
    assert torch.equal(out(keep.net, x, t, c), out(dm.unet, x, t, c))
    assert (out(flipped.net, x, t, c) - out(dm.unet, x, t, c)).abs().max() > 1e-4
    assert all((e.values >= 0).all() for e in flipped.entries.values())


def test_sara_nuclear_norm_gradient_is_u_v_transposed_at_the_mask():
    dm = tiny_fewstep()
    w = tuning.make_weights("sara", dm.unet, fraction=0.3, rank_weight=0.5)
    assert w._large, "the tiny UNet has weights large enough for the penalty"
    name = random.Random(3).choice(w._large)
    term = w.penalty(random.Random(3))["rank"]
    term.backward()
    e = w.entries[name]
    rows, cols = w._matrix_shape(name)
    dense = torch.zeros(rows * cols).scatter(0, e.index, e.values.detach()).view(rows, cols)
    u, s, vh = torch.linalg.svd(dense, full_matrices=False)
    assert term.item() == pytest.approx(0.5 * s.sum().item(), rel=1e-5)
    expected = (0.5 * u @ vh).flatten()[e.index]
    assert torch.allclose(e.values.grad, expected, atol=1e-5)


def test_sara_reselects_halfway_and_freezes_what_grew_past_the_threshold():
    dm = tiny_fewstep()
    w = tuning.make_weights("sara", dm.unet, fraction=0.1, rank_weight=0.0)
    x, t, c = batch()
    opt = torch.optim.AdamW(w.parameters(), lr=5e-2)
    restarted = []
    for step in range(1, 5):
        opt.zero_grad()
        out(w.net, x, t, c).pow(2).mean().backward()
        opt.step()
        before = {n: p.detach().clone() for n, p in tuning.plain_network(w).named_parameters()}
        if w.progress(step, 4):
            restarted.append(step)
            for name, e in w.entries.items():  # the new set: exactly the entries now below the threshold
                expected = (before[name].abs() < w.thresholds[name]).flatten().nonzero().squeeze(1)
                assert torch.equal(e.index, expected)
            opt = torch.optim.AdamW(w.parameters(), lr=5e-2)
    assert restarted == [2] and w.reselected
    assert w.count < w.initial_count  # entries that grew past their threshold stay frozen at their values


def test_lora_distance_is_the_merged_update_norm():
    dm = tiny_fewstep()
    w = tuning.make_weights("lora", dm.unet, rank=2)
    for p in w.parameters():
        p.data.normal_(0, 0.05)
    merged = lora_merged(w.net)
    expected = sum((merged[k] - v).pow(2).sum() for k, v in dm.unet.state_dict().items() if k in merged)
    assert w.distance_sq().item() == pytest.approx(expected.item(), rel=1e-4)


def lora_merged(net):
    import copy

    from peft.tuners.lora import LoraLayer

    m = copy.deepcopy(net)
    out = {}
    for name, mod in m.named_modules():
        if isinstance(mod, LoraLayer):
            out[f"{name}.weight"] = mod.base_layer.weight.detach() + mod.get_delta_weight("default").detach()
    return out


@pytest.mark.parametrize("kind", ["sara", "full", "lora"])
def test_saved_tuned_models_of_every_kind_load_back_equal(kind, tmp_path):
    dm = tiny_fewstep()
    x, t, c = batch()
    w = tuning.make_weights(kind, dm.unet, rank=2, fraction=0.2)
    opt = torch.optim.AdamW(w.parameters(), lr=1e-2)
    out(w.net, x, t, c).pow(2).mean().backward()
    opt.step()
    folder = adapters.save_tuned(w.state(), {"base": "digits-fewstep", "weights": kind, "lora_rank": 2}, "saved", tmp_path)
    loaded = adapters.load_tuned(folder, dm)
    assert torch.allclose(out(loaded.unet, x, t, c), out(tuning.plain_network(w), x, t, c), atol=1e-6)
    if kind == "sara":  # only the changed entries are stored
        stored = sum(v.numel() for k, v in w.state().items() if k.endswith(".values"))
        assert stored <= w.count


def test_sparse_entries_that_do_not_fit_are_refused():
    dm = tiny_fewstep()
    name = next(n for n, p in dm.unet.named_parameters() if p.dim() == 4)
    with pytest.raises(ValueError, match="do not fit"):
        apply_sparse(dm.unet, {f"{name}.index": torch.tensor([10**9]), f"{name}.values": torch.tensor([1.0])})
    with pytest.raises(ValueError, match="do not fit"):
        apply_sparse(dm.unet, {"nope.index": torch.tensor([0]), "nope.values": torch.tensor([1.0])})


# --- R0 ----------------------------------------------------------------------------------------------

def test_soft_thickness_follows_the_style_measure_on_real_digits():
    x = torch.from_numpy(digits.load("test").images[:200]).float()
    soft, hard = r0.soft_thickness(x).numpy(), digits.thickness(x)
    assert np.corrcoef(soft, hard)[0, 1] > 0.8
    assert (r0.soft_thickness(digits.dilate(x)) > r0.soft_thickness(x)).float().mean() > 0.9


def test_r0_generator_without_eta_is_the_students_ddim_sampler():
    dm = tiny_fewstep()
    fs = boot.FewStep(dm)
    with torch.no_grad():
        ours = r0.generate(fs, [3], torch.Generator().manual_seed(11), random_eta=False)
    assert torch.allclose(ours, fs.sample([3], [11], 4), atol=1e-3)  # x0 at t=999 amplifies float error 1/alpha
    a = r0.generate(fs, [3, 3], torch.Generator().manual_seed(5), random_eta=True)
    b = r0.generate(fs, [3, 3], torch.Generator().manual_seed(5), random_eta=False)
    assert not torch.allclose(a, b)  # random eta adds fresh noise along the way


def test_r0_normalised_gradients_have_unit_norm_per_image_and_reward():
    dm = tiny_fewstep()
    fs = boot.FewStep(dm)
    w = tuning.make_weights("lora", dm.unet, rank=2)
    fs = boot.FewStep(dm, w.net)
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10))
    seen = {}
    real_grad = torch.autograd.grad

    def spy(outputs, inputs, **kw):
        g = real_grad(outputs, inputs, **kw)
        seen.setdefault("norms", []).append(g[0].flatten(1).norm(dim=1))
        return g

    terms = None
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.autograd, "grad", spy)
        terms = r0.r0_terms(fs, w, [1, 2], classifier, torch.Generator().manual_seed(0), class_weight=1.0,
                            style_weight=1.0, weight_reg=0.5, random_eta=True, normalise=True)
    assert len(seen["norms"]) == 2  # one gradient per reward
    terms["loss"].backward()
    images = r0.generate(fs, [1, 2], torch.Generator().manual_seed(0), random_eta=True)
    images.retain_grad()
    assert all(p.grad is not None for p in w.parameters())
    assert terms["reg"].item() == pytest.approx(0.0, abs=1e-12)  # the adapter starts at the base


def test_r0_needs_a_reward():
    with pytest.raises(ParamError, match="reward"):
        tune.check_params(tune.Params(loss="r0", r0_class_weight=0.0, r0_style_weight=0.0))


# --- Diffusion-DRO -----------------------------------------------------------------------------------

def test_dro_trajectories_are_the_ddim_sampler_and_record_the_policys_noise():
    dm = tiny_fewstep()
    fs = boot.FewStep(dm)
    traj = dro.trajectories(fs, dm.unet, [4], torch.Generator().manual_seed(7), 4, perturb=False)
    assert traj["t"][:, 0].tolist() == fs.timesteps.tolist()
    last = traj["x_t"][-1]
    t = traj["t"][-1]
    x0 = (last - fs.sigma[t].view(-1, 1, 1, 1) * traj["eps"][-1]) / fs.alpha[t].view(-1, 1, 1, 1)
    assert torch.allclose(x0.clamp(-1, 1) if fs.clip else x0, fs.sample([4], [7], 4), atol=1e-3)


def test_dro_perturbs_a_multi_step_grid_per_image():
    dm = tiny_fewstep()
    fs = boot.FewStep(dm, steps=20)
    grid = dro.timestep_grid(fs, 6, 20, torch.Generator().manual_seed(0), perturb=True)
    assert grid.shape == (20, 6) and (grid[:-1] > grid[1:]).all()
    assert len({tuple(col) for col in grid.T.tolist()}) > 1  # images get different offsets
    assert ((grid - grid[:, :1]).abs() < 50).all()  # within one step spacing


def test_dro_starts_at_the_margin_and_syncs_its_policy():
    dm = tiny_fewstep()
    w = tuning.make_weights("lora", dm.unet, rank=2)
    fs = boot.FewStep(dm, w.net)
    x, labels = digits.style_set("thick", n=4)
    obj = dro.DRO(fs, w, fs.encode(x), labels, margin=1e-3, sync_every=2, buffer_size=2)
    gen = torch.Generator().manual_seed(0)
    terms = obj(1, gen)
    assert terms["loss"].item() == pytest.approx(1e-3, abs=1e-6)  # network == reference: every pair sits at the margin
    policy = obj.policy
    obj(2, gen)
    assert obj.policy is policy
    obj(3, gen)
    assert obj.policy is not policy and len(obj.buffer.batches) == 2


# --- the method --------------------------------------------------------------------------------------

@pytest.mark.parametrize("loss, weights", [("r0", "lora"), ("dro", "sara"), ("plain-distilled", "full")])
def test_every_method_trains_through_run(loss, weights, fewstep_manager):
    from studio.core.loading import load_zoo

    fewstep_manager.register("guide-clean", lambda: load_zoo("guide-clean"), info={"kind": "classifier"})
    p = tune.Params(loss=loss, weights=weights, steps=2, style="thick-0-4", validate_every=5, lora_rank=2, n_refs=1)
    tuned = list(tune.run(p, fewstep_manager))[-1]
    assert isinstance(tuned, tune.Tuned) and len(tuned.history) == 2 and tuned.row is None
    assert tuned.params["loss"] == loss and tuned.params["weights"] == weights
    assert tuned.stats["trainable"] > 0 and tuned.stats["optimizer_bytes"] == 8 * tuned.stats["trainable"] or weights == "sara"
    assert all(r["in use"] == 0 for r in fewstep_manager.status())


def test_a_measured_run_carries_its_comparison_row(fewstep_manager, monkeypatch):
    from studio.core.loading import load_zoo

    for name in ("judge-digits", "fd-digits"):
        fewstep_manager.register(name, lambda n=name: load_zoo(n), info={"kind": "classifier"})
    monkeypatch.setattr(tune, "COMPARE_PER_CLASS", 4)
    monkeypatch.setattr(tune, "COMPARE_BOOT", 10)
    p = tune.Params(loss="plain-distilled", steps=1, style="thick-0-4", validate_every=5, lora_rank=2, n_refs=1)
    row = list(tune.run(p, fewstep_manager, measure=True))[-1].row
    assert row["loss"] == "plain-distilled" and row["weights"] == "lora" and row["other_digits"] == [5, 6, 7, 8, 9]
    for key in ("style_rate", "judge_accuracy", "forgetting_accuracy"):
        assert row[key]["low"] <= row[key]["value"] <= row[key]["high"] and row[key]["n"] > 0
    assert row["drift_fd"]["value"] >= 0 and row["forgetting_fd"]["value"] >= 0
    assert row["judge_accuracy"]["n"] == 20 * 5  # the tuned digits 0-4 only, 100 samples at least for the FD
