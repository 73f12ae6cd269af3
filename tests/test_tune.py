"""Tune (PSO) and the few-step student (BOOT): the losses by hand, LoRA never touching the base, the
style measure on real digits, bad inputs, saving, the method's run through a manager, the data-free
distillation, the real SD path."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from tests.conftest import tiny_digits_unet

from studio.core import adapters
from studio.core.models import DiffusionModel
from studio.core.params import ParamError
from studio.core.sampling import Progress
from studio.data import digits, style_judge
from studio.methods import tune
from studio.nets import lora
from studio.train import boot, pso
from tests.contract import MethodContract


def tiny_fewstep(name="digits-fewstep"):
    return DiffusionModel(name, tiny_digits_unet(), boot.scheduler_config(), "sample", "class",
                          {"null_class": 10, "few_step": list(boot.DISTILLED)})


def state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


# --- the style measure --------------------------------------------------------------------------

def test_thickness_of_a_bar_by_hand():
    x = -torch.ones(2, 1, 16, 16)
    x[0, 0, 5:7, 3:7] = 1  # 2 x 4 bar: area 8, perimeter 12
    x[1, 0, 2:5, 2:5] = 1  # 3 x 3 block: area 9, perimeter 12
    assert digits.thickness(x) == pytest.approx([2 * 8 / 12, 2 * 9 / 12])


def test_style_measure_on_real_digits():
    test = digits.load("test").images
    for style in ("thick", "thin"):
        assert 0.1 <= digits.on_style(test, style).mean() <= 0.3  # the training percentile holds on held-out digits
    thick = torch.from_numpy(test)
    assert digits.on_style(digits.dilate(thick), "thick").mean() >= 0.9  # thicker strokes are called on-style
    assert digits.on_style(digits.dilate(thick), "thin").mean() <= 0.02


def test_independent_style_judge_separates_thick_from_thin_held_out_digits():
    v = style_judge.validation()  # fitted on training digits dilated / eroded, scored on the test split
    assert v["heldout_dilated_vs_eroded_accuracy"] >= 0.95
    assert 0.1 <= v["test_called_thick"] <= 0.3  # the training percentile holds on held-out digits
    assert v["test_dilated_called_thick"] >= 0.9 and v["test_eroded_called_thick"] <= 0.05
    assert v["auc_vs_thickness_measure"] >= 0.8  # agrees with the thickness measure on natural digits, without its labels
    test = torch.from_numpy(digits.load("test").images)
    assert (style_judge.score(digits.dilate(test)) > style_judge.score(style_judge.erode(test))).mean() >= 0.95


@pytest.mark.parametrize("style", ["thick", "thin"])
def test_style_sets_are_on_style_and_spread_over_classes(style):
    x, labels = digits.style_set(style)
    assert x.shape == (16, 1, 16, 16) and len(labels) == 16
    assert max(labels.count(c) for c in set(labels)) <= 2
    assert digits.on_style(x, style).all()


# --- the losses ---------------------------------------------------------------------------------

def test_pso_loss_forms_by_hand():
    l_w, l_l = torch.tensor([0.3, 0.1]), torch.tensor([0.2, 0.4])
    ref_w, ref_l = torch.tensor([0.2, 0.2]), torch.tensor([0.2, 0.2])
    out = tune.pso_loss(l_w, l_l, ref_w, ref_l, form="dpo", beta=2.0, prior_weight=0.5)
    model_diff = l_w - l_l  # 0.1, -0.3; ref_diff 0, 0
    expected = -np.log(1 / (1 + np.exp(-2.0 * (0 - model_diff.numpy())))).mean() + 0.5 * 0.3
    assert float(out["loss"]) == pytest.approx(expected, rel=1e-6)
    hinge = tune.pso_loss(l_w, l_l, None, None, form="hinge", beta=2.0, prior_weight=0.0, neg_weight=0.5)
    diff = l_w - 0.5 * l_l  # 0.2, -0.1 -> relu(1 + 2 diff) = 1.4, 0.8
    assert float(hinge["loss"]) == pytest.approx(1.1)
    assert float(diff[0]) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        tune.pso_loss(l_w, l_l, None, None, form="sigmoid", beta=1.0, prior_weight=0.0)


def test_hinge_reports_the_share_of_pairs_inside_the_hinge():
    l_w, l_l = torch.tensor([0.3, 0.1]), torch.tensor([0.2, 0.4])  # model_diff 0.1, -0.3
    assert float(tune.pso_loss(l_w, l_l, None, None, form="hinge", beta=2.0, prior_weight=0.0)["active"]) == 1.0
    assert float(tune.pso_loss(l_w, l_l, None, None, form="hinge", beta=5.0, prior_weight=0.0)["active"]) == 0.5
    assert "active" not in tune.pso_loss(l_w, l_l, l_w, l_l, form="dpo", beta=5.0, prior_weight=0.0)


@pytest.mark.parametrize("form", ["dpo", "hinge"])
def test_reference_weight_zero_leaves_references_only_the_prior(form):
    l_w = torch.tensor([0.3, 0.1], requires_grad=True)
    l_l = torch.tensor([0.2, 0.4], requires_grad=True)
    ref = torch.tensor([0.25, 0.25])
    out = tune.pso_loss(l_w, l_l, ref, ref, form=form, beta=5.0, prior_weight=0.5, neg_weight=0.0)
    out["loss"].backward()
    assert torch.allclose(l_l.grad, torch.full((2,), 0.25))  # d(0.5 mean L_l) / dL_l: the pair term ignores L_l
    if form == "hinge":  # reference-free and always active: 1 + beta L_w, the diffusion loss scaled, plus the prior
        assert float(out["loss"].detach()) == pytest.approx(1 + 5.0 * 0.2 + 0.5 * 0.3)
        assert float(out["active"]) == 1.0


def _recorded_timesteps(monkeypatch, loss: str, calls: int = 12) -> tuple[set[int], dict]:
    dm = tiny_fewstep()
    fs = boot.FewStep(dm, lora.with_lora(dm.unet, 2))
    x, labels = digits.style_set("thick", n=4)
    p = tune.Params(loss=loss, n_refs=2, prior_weight=0.5)
    refs = torch.randn(4, 2, 1, 16, 16)
    seen, real_x0 = [], fs.x0
    monkeypatch.setattr(fs, "x0", lambda x_t, t, cond: seen.extend(t.tolist()) or real_x0(x_t, t, cond))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(calls):
            terms = tune.offline_terms(fs, p, x, refs, fs.condition(labels), gen)
    return set(seen), terms


def test_fair_baseline_visits_only_the_distilled_timesteps_and_keeps_the_prior(monkeypatch):
    seen, terms = _recorded_timesteps(monkeypatch, "plain-distilled")
    assert seen == set(boot.DISTILLED)  # 999, 749, 499, 249: the student's own sampler's timesteps
    assert float(terms["loss"]) == pytest.approx(float(terms["L_w"]) + 0.5 * float(terms["L_l"]), rel=1e-5)
    assert "pair" not in terms
    uniform, _ = _recorded_timesteps(monkeypatch, "plain")  # DreamBooth's: mostly timesteps the student never visits
    assert len(uniform - set(boot.DISTILLED)) >= 40  # of 48 draws


def test_weighted_x0_error_is_the_epsilon_mse():
    dm = tiny_fewstep()
    fs = boot.FewStep(dm)
    x0, noise, t = torch.rand(3, 1, 16, 16) * 2 - 1, torch.randn(3, 1, 16, 16), torch.tensor([999, 499, 249])
    cond = fs.condition([1, 2, 3])
    with torch.no_grad():
        l_w, _ = tune.pair_errors(fs, x0, x0, cond, t, noise)
        x_t = fs.noised(x0, t, noise)
        eps_hat = (x_t - fs.alpha[t].view(-1, 1, 1, 1) * fs.x0(x_t, t, cond)) / fs.sigma[t].view(-1, 1, 1, 1)
    assert torch.allclose(l_w, ((eps_hat - noise) ** 2).flatten(1).mean(1), rtol=1e-3)


def test_dpo_form_pushes_targets_up_and_references_down():
    l_w = torch.tensor([0.2], requires_grad=True)
    l_l = torch.tensor([0.2], requires_grad=True)
    tune.pso_loss(l_w, l_l, torch.tensor([0.2]), torch.tensor([0.2]), form="dpo", beta=10.0,
                  prior_weight=0.0)["loss"].backward()
    assert l_w.grad > 0 and l_l.grad < 0  # lower target error, higher reference error, relative to the reference
    assert float(tune.pso_loss(l_w.detach(), l_l.detach(), l_w.detach(), l_l.detach(), form="dpo", beta=10.0, prior_weight=0.0)["loss"]) == \
        pytest.approx(math.log(2))


def test_online_loss_clips_the_ratio():
    pref = torch.tensor([1.0, -1.0])
    big = torch.tensor([0.5, 0.5])  # exp(0.5) = 1.65 -> clipped to 1.1
    loss = pso.online_pso_loss(big, torch.zeros(2), pref, beta=50.0)
    expected = -np.log(1 / (1 + np.exp(-50 * np.array([1, -1]) * np.log(1.1)))).mean()
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    log_r = torch.tensor([0.5, 0.05], requires_grad=True)
    pso.online_pso_loss(log_r, torch.zeros(2), pref).backward()
    assert log_r.grad[0] == 0 and log_r.grad[1] != 0  # outside the clip range there is no gradient


# --- LoRA and a tuning run ----------------------------------------------------------------------

def test_lora_starts_as_the_base_and_never_touches_it():
    dm = tiny_fewstep()
    before = state(dm.unet)
    net = lora.with_lora(dm.unet, rank=4)
    x, t, c = torch.randn(2, 1, 16, 16), torch.tensor([999, 249]), torch.tensor([1, 2])
    with torch.no_grad():
        assert torch.allclose(net(x, t, class_labels=c).sample, dm.unet(x, t, class_labels=c).sample, atol=1e-6)
        for p in lora.trainable(net):
            p.add_(0.1)
        changed = net(x, t, class_labels=c).sample
        with lora.adapter_off(net):
            off = net(x, t, class_labels=c).sample
    assert not torch.allclose(changed, off)
    assert torch.allclose(off, dm.unet(x, t, class_labels=c).sample, atol=1e-6)
    assert all(torch.equal(v, state(dm.unet)[k]) for k, v in before.items())
    assert set(lora.lora_targets(dm.unet)) == {"conv1", "conv2"}


def test_tune_runs_yields_grids_and_keeps_the_base(tmp_path):
    dm = tiny_fewstep()
    before = state(dm.unet)
    x, labels = digits.style_set("thick", n=4)
    p = tune.Params(steps=3, validate_every=2, lora_rank=2, n_refs=2)
    items = list(tune.tune(dm, x, labels, p))
    progress, tuned = items[:-1], items[-1]
    assert [i.step for i in progress] == [0, 1, 2, 3] and all(isinstance(i, Progress) for i in progress)
    assert [i.grid is not None for i in progress] == [True, False, True, True]
    assert progress[0].grid.shape == (len(set(labels)), 3, 1, 16, 16)
    assert isinstance(tuned, tune.Tuned) and len(tuned.history) == 3
    assert all(math.isfinite(h["loss"]) for h in tuned.history)
    assert progress[1].losses["pair"] == pytest.approx(math.log(2), rel=1e-5)  # model == reference at step 1
    assert all(torch.equal(v, dm.unet.state_dict()[k]) for k, v in before.items())
    model = tuned.model("digits-fewstep-thick")
    assert model.unet is not dm.unet and model.info["tune"]["loss"] == "dpo"
    assert tuned.parameters is tuned.params and tuned.parameters["trained_steps"] == 3
    # saved and loaded back: the same outputs, from safetensors
    folder = adapters.save_tuned(lora.lora_state(tuned.unet), tuned.params, "thick-1", root=tmp_path)
    assert (folder / "adapter.safetensors").exists()
    loaded = adapters.load_tuned(folder, dm)
    xt, t, c = torch.randn(2, 1, 16, 16), torch.tensor([999, 499]), torch.tensor([3, 4])
    with torch.no_grad():
        assert torch.allclose(loaded.unet(xt, t, class_labels=c).sample, model.unet(xt, t, class_labels=c).sample,
                              atol=1e-5)
    with pytest.raises(ParamError, match="already exists"):
        adapters.save_tuned(lora.lora_state(tuned.unet), tuned.params, "thick-1", root=tmp_path)


@pytest.mark.parametrize("loss", ["hinge", "plain-distilled", "plain"])
def test_other_loss_forms_train(loss):
    dm = tiny_fewstep()
    x, labels = digits.style_set("thin", n=2)
    tuned = tune.run_tune(dm, x, labels, tune.Params(steps=2, loss=loss, lora_rank=2, n_refs=1))
    assert len(tuned.history) == 2 and all(math.isfinite(h["loss"]) for h in tuned.history)
    changed = [n for n, p in tuned.unet.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    assert changed  # the adapter moved from its zero start


def test_stop_keeps_the_adapter_trained_so_far():
    dm = tiny_fewstep()
    x, labels = digits.style_set("thick", n=2)
    calls = []
    items = list(tune.tune(dm, x, labels, tune.Params(steps=50, lora_rank=2, n_refs=1),
                           stop=lambda: calls.append(1) or len(calls) >= 2))
    assert items[-2].step == 2 and items[-2].grid is not None
    assert items[-1].params["trained_steps"] == 2 and len(items[-1].history) == 2


# --- the method's run, through a manager ------------------------------------------------------

def test_run_leases_the_base_inside_and_yields_progress_then_the_tuned_model(fewstep_manager):
    m = fewstep_manager
    with m.use("digits-fewstep") as dm:
        before = state(dm.unet)
    items = list(tune.run(tune.Params(steps=2, lora_rank=2, n_refs=1, validate_every=5), m))
    progress, tuned = items[:-1], items[-1]
    assert all(isinstance(i, tune.TrainProgress) for i in progress) and isinstance(tuned, tune.Tuned)
    assert [i.step for i in progress] == [0, 1, 2] and progress[1].info == progress[1].losses
    assert tuned.labels == digits.style_set("thick")[1]  # the bundled style set unless images are given
    assert all(row["in use"] == 0 for row in m.status())
    with m.use("digits-fewstep") as dm:
        assert all(torch.equal(v, dm.unet.state_dict()[k]) for k, v in before.items())
    tune.register(tuned, m, "digits-fewstep-tuned")
    assert "digits-fewstep-tuned" in m.keys(kinds=("image",))


def test_run_stops_early_and_still_yields_what_was_trained(fewstep_manager):
    x, labels = digits.style_set("thin", n=2)
    items = list(tune.run(tune.Params(style="custom", steps=50, lora_rank=2, n_refs=1), fewstep_manager,
                          stop=lambda: True, images=x, labels=labels))
    assert [i.step for i in items[:-1]] == [0, 1] and items[-1].params["trained_steps"] == 1
    assert items[-1].labels == labels


@pytest.mark.parametrize("params, match", [
    (dict(style="custom"), "draw or upload"), (dict(base="nope"), "unknown base model"), (dict(steps=0), "steps"),
])
def test_run_refuses_bad_requests_with_a_message(fewstep_manager, params, match):
    with pytest.raises(ParamError, match=match):
        next(tune.run(tune.Params(**params), fewstep_manager))


def test_saved_models_are_registered_as_image_models_by_name(fewstep_manager, tmp_path):
    from studio.core.manager import ModelManager

    x, labels = digits.style_set("thick", n=2)
    with fewstep_manager.use("digits-fewstep") as dm:
        tuned = tune.run_tune(dm, x, labels, tune.Params(steps=1, lora_rank=2, n_refs=1))
    assert tune.save(tuned, "thick-2", fewstep_manager, root=tmp_path) == "thick-2"
    assert "thick-2" in fewstep_manager.keys(kinds=("image",))
    with pytest.raises(ParamError, match="already exists"):
        tune.save(tuned, "thick-2", fewstep_manager, root=tmp_path)
    assert json.loads((tmp_path / "thick-2" / "tuned.json").read_text())["seconds"] >= 0
    for zoo in (True, False):  # a later session finds it, with or without the zoo registered first
        later = ModelManager(device="cpu")
        if zoo:
            later.register_zoo()
        assert adapters.register_saved(later, root=tmp_path) == ["thick-2"]
        assert "thick-2" in later.keys(kinds=("image",))
        assert later.info("thick-2")["tuned_from"] == "digits-fewstep"


def test_studio_launch_offers_models_saved_in_earlier_sessions(monkeypatch, tmp_path):
    """``studio launch`` (what ``make studio`` runs) passes its own manager to the app: it registers the saved
    tuned models itself (it did not, once). The launch is caught before a server starts."""
    import components
    from studio import cli
    from studio.core import manager as manager_module

    monkeypatch.setattr(manager_module, "_DEFAULT", None)  # a fresh process-wide manager, restored afterwards
    folder = tmp_path / "tuned" / "thick-saved"
    folder.mkdir(parents=True)
    (folder / "tuned.json").write_text(json.dumps({"base": "digits-fewstep"}))  # loaded only when used
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path))
    launched = {}
    monkeypatch.setattr(components, "launch", lambda manager, **kw: launched.update(manager=manager, **kw))
    assert cli.main(["launch", "--port", "7999"]) == 0
    assert "thick-saved" in launched["manager"].keys(kinds=("image",)) and launched["server_port"] == 7999


def test_merged_lora_experts_equal_the_adapter_and_old_peft_keys_still_load():
    """PPAP's experts go through the one LoRA implementation; the shipped ``guide-ppap`` files name
    their tensors as peft's ``PeftModel`` wrapper did (``base_model.model.``...)."""
    from studio.nets.classifiers import GuideNet, build_experts, expert_state, lora_config, make_lora

    torch.manual_seed(0)
    base = GuideNet(width=8).eval()
    model = make_lora(base, lora_config())
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    model.eval()
    x = torch.randn(3, 1, 16, 16)
    kept = expert_state(model, lora=True)
    legacy = {"base_model.model." + k: v for k, v in kept.items()}
    with torch.no_grad():
        want = model(x)
        for stored in (kept, legacy):
            expert = build_experts(base, [stored], "lora").experts[0]
            assert not any("lora_" in n for n, _ in expert.named_modules())  # merged into plain convolutions
            assert torch.allclose(expert(x), want, atol=1e-5)


@pytest.mark.parametrize("case, match", [
    ("one", "2 to 16"), ("seventeen", "2 to 16"), ("size", "must be"), ("nan", "NaN"), ("labels", "conditions"),
])
def test_bad_targets_get_a_message(case, match):
    dm = tiny_fewstep()
    x, labels = digits.style_set("thick", n=4)
    if case == "one":
        x, labels = x[:1], labels[:1]
    elif case == "seventeen":
        x, labels = x.repeat(5, 1, 1, 1)[:17], (labels * 5)[:17]
    elif case == "size":
        x = torch.zeros(4, 1, 8, 8)
    elif case == "nan":
        x = x.clone()
        x[0, 0, 0, 0] = float("nan")
    else:
        labels = labels[:3]
    with pytest.raises(ParamError, match=match):
        next(tune.tune(dm, x, labels, tune.Params(steps=1)))


@pytest.mark.parametrize("name", ["", "../etc", "A", "x" * 41, "a b"])
def test_tuned_names_never_become_paths(name, tmp_path):
    with pytest.raises(ParamError):
        adapters.check_name(name)


def test_a_non_safetensors_adapter_is_refused(tmp_path):
    dm = tiny_fewstep()
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "adapter.safetensors").write_bytes(b"not a safetensors file")
    (folder / "tuned.json").write_text('{"base": "digits-fewstep", "lora_rank": 2}')
    with pytest.raises(Exception):
        adapters.load_tuned(folder, dm)


def test_online_pso_starts_at_log_two_and_trains_the_adapter():
    dm = tiny_fewstep()
    unet = lora.with_lora(dm.unet, 2)
    fs = boot.FewStep(dm, unet)
    params = lora.trainable(unet)
    terms = pso.online_step(fs, [1, 2, 3], digits.thickness, torch.Generator().manual_seed(0), steps=4)
    assert float(terms["loss"].detach()) == pytest.approx(math.log(2), abs=1e-5)  # adapter-on == adapter-off
    for p in params:  # move the adapter; the loss now depends on it
        p.data.add_(0.05 * torch.randn_like(p))
    terms = pso.online_step(fs, [1, 2, 3], digits.thickness, torch.Generator().manual_seed(0), steps=4)
    terms["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    unet2, history = pso.run_online(dm, [0, 1], digits.thickness, iterations=2, rank=2)
    assert len(history) == 2 and all(math.isfinite(h["loss"]) for h in history)


def test_fewstep_samples_at_the_distilled_timesteps():
    fs = boot.FewStep(tiny_fewstep())
    assert fs.timesteps.tolist() == list(boot.DISTILLED)
    for steps in (1, 2, 4):
        assert fs.sample([1, 2], [0, 1], steps).shape == (2, 1, 16, 16)
    assert torch.equal(fs.sample([1], [5], 2), fs.sample([1], [5], 2))  # seeded
    for off_grid in (3, 5):
        with pytest.raises(ParamError, match="1, 2, 4"):
            fs.sample([1], [0], off_grid)


# --- the real path: a diffusers few-step text-to-image pipeline --------------------------------

def test_pso_drives_a_stable_diffusion_pipeline(tiny_sd_folder):
    from studio.core.loading import load_folder

    dm = load_folder(tiny_sd_folder)
    before = state(dm.unet)
    images = torch.rand(2, 3, 16, 16) * 2 - 1  # the tiny VAE's image size
    prompts = ["a photo of sks dog", "a photo of sks dog"]
    tuned = tune.run_tune(dm, images, prompts, tune.Params(base="tiny-sd", steps=2, lora_rank=2, n_refs=1))
    assert set(lora.lora_targets(dm.unet)) == {"to_q", "to_k", "to_v", "to_out.0"}
    assert len(tuned.history) == 2 and all(math.isfinite(h["loss"]) for h in tuned.history)
    assert all(torch.equal(v, dm.unet.state_dict()[k]) for k, v in before.items())
    assert boot.FewStep(tuned.model("tuned"), tuned.unet).sample(prompts[:1], [0], 2).shape == (1, 3, 16, 16)
    # Diffusion-DRO on SaRA's sparse weights drives the same pipeline (epsilon and v prediction); R0's rewards read digits
    dro = tune.run_tune(dm, images, prompts, tune.Params(base="tiny-sd", loss="dro", weights="sara", steps=2))
    assert all(math.isfinite(h["loss"]) for h in dro.history) and dro.stats["trainable"] > 0
    assert all(torch.equal(v, dm.unet.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ParamError, match="digits"):
        tune.run_tune(dm, images, prompts, tune.Params(base="tiny-sd", loss="r0", steps=1))


# --- BOOT -------------------------------------------------------------------------------------

def test_boot_target_is_one_ddim_step_in_signal_space():
    alpha, sigma = boot.signal_scales()
    t, s = 600, 570
    y_t, eps, x0 = torch.randn(3, 4, 4), torch.randn(3, 4, 4), torch.randn(3, 4, 4)
    x_t = alpha[t] * y_t + sigma[t] * eps
    eps_hat = (x_t - alpha[t] * x0) / sigma[t]
    x_s = alpha[s] * x0 + sigma[s] * eps_hat  # DDIM (eta 0) from t to s
    lam = 1 - sigma[s] * alpha[t] / (sigma[t] * alpha[s])
    assert torch.allclose((x_s - sigma[s] * eps) / alpha[s], y_t + lam * (x0 - y_t), atol=1e-5)


def test_distillation_never_reads_the_dataset(monkeypatch, tmp_path):
    def forbidden(*args, **kwargs):
        raise AssertionError("BOOT read the dataset")

    monkeypatch.setattr(digits, "load", forbidden)
    monkeypatch.setattr(boot, "BATCH", 4)
    result = boot.train(boot=2, student=2, root=tmp_path, teacher=tiny_digits_unet(), export=False, progress=False)
    assert result["steps"] == 4
    row = result["history"][-1]
    assert {"bs", "bc", "x0"} <= set(row) and all(math.isfinite(v) for v in row.values())
    again = boot.train(boot=2, student=3, root=tmp_path, teacher=tiny_digits_unet(), export=False, progress=False)
    assert again["steps"] == 5  # resumed from the checkpoint


def test_student_exports_as_a_few_step_zoo_entry(tmp_path, monkeypatch):
    import json

    from studio.core.loading import _load_entry

    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "MANIFEST.json").write_text("{}")
    boot.export_student("digits-fewstep", tiny_digits_unet(), {"steps": 1, "seconds": 1.0, "recipe": {},
                                                               "history": [{"step": 1, "x0": 0.1}]}, zoo)
    dm = _load_entry(zoo / "digits-fewstep")
    assert dm.prediction_type == "sample" and dm.info["default_scheduler"] == "ddim"
    assert boot.FewStep(dm).timesteps.tolist() == [999, 749, 499, 249]
    assert json.loads((zoo / "MANIFEST.json").read_text())["digits-fewstep"]["recipe"] == "studio train digits-fewstep"


class TestTuneContract(MethodContract):
    method_id = "tune"
    bad = [({"steps": 0}, "Training steps"), ({"base": "nope"}, "unknown base model"), ({"style": "custom"}, "custom")]

    @pytest.fixture
    def manager(self, fewstep_manager):
        return fewstep_manager

    def params(self):
        return tune.Params(style="thick", steps=2, lora_rank=2, n_refs=1, seed=3)

    def output(self, result):
        return {k: v.detach().clone() for k, v in lora.lora_state(result.unet).items()}
