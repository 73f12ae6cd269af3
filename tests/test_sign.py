"""SIGN: the teacher pairs its regression term distils from, and the gradient routing of its losses."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from studio.core.models import DiffusionModel
from studio.core.sampling import make_scheduler, run_to_end, sample
from studio.train import sign
from studio.train.diffusion import noise_scheduler
from tests.conftest import tiny_digits_unet


def test_teacher_pairs_are_deterministic_per_index_cached_and_the_teachers_ddim_samples(tmp_path):
    model = DiffusionModel("digits-cond", tiny_digits_unet(), dict(noise_scheduler().config), "epsilon", "class",
                           {"null_class": 10})
    z, x = sign.teacher_pairs(6, model=model, steps=3, chunk=4, root=tmp_path)
    assert z.shape == x.shape == (6, 1, 16, 16) and len(list((tmp_path / "sign-pairs").rglob("*.safetensors"))) == 2
    z4, x4 = sign.teacher_pairs(4, model=model, steps=3, chunk=2, root=tmp_path / "other")
    torch.testing.assert_close(z4, z[:4])  # pair k depends on k only, not on n or the chunking
    torch.testing.assert_close(x4, x[:4], rtol=1e-4, atol=1e-5)
    again = sign.teacher_pairs(6, model=model, steps=3, chunk=4, root=tmp_path)  # read back from the cache
    torch.testing.assert_close(again[1], x)
    sched = make_scheduler("ddim", model.scheduler_config)
    direct = run_to_end(sample(lambda a, t: model.model_fn(a, t, {"class_labels": torch.full((a.shape[0],), 10)}),
                               sched, (2, 1, 16, 16), num_inference_steps=3, latents=z[4:6], eta=0.0))
    torch.testing.assert_close(x[4:6], direct.clamp(-1, 1), rtol=1e-4, atol=1e-5)


def _f():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(4, 1, 3, padding=1))


def _grads(f, loss):
    f.zero_grad()
    loss.backward(retain_graph=True)
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in f.parameters()]


def test_ign_losses_route_their_gradients_as_the_paper_does():
    from torch.func import functional_call

    f = _f()
    f_copy = sign.frozen_copy(f)
    x, z = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    losses = sign.ign_losses(f, f_copy, x, z)
    assert not any(p.requires_grad for p in f_copy.parameters())
    frozen = {k: v.detach().clone() for k, v in f.named_parameters()}

    def g(inp):  # f with its weights as constants
        return functional_call(f, frozen, (inp,))

    # idempotence: through the inner application only
    want = sign.distance(g(f(z)), f(z)).mean()
    for got, exp in zip(_grads(f, losses["idem"]), _grads(f, want)):
        torch.testing.assert_close(got, exp)
    # tightness: through the outer application only, and not zero (the porting bug gives it none)
    fz = f(z).detach()
    ref = sign.distance(fz, z)
    raw = -sign.distance(f(fz), fz)
    want = (torch.tanh(raw / (1.5 * ref)) * 1.5 * ref).mean()
    got = _grads(f, losses["tight"])
    for a, b in zip(got, _grads(f, want)):
        torch.testing.assert_close(a, b)
    assert any(float(t.abs().sum()) > 0 for t in got)
    assert abs(float(losses["tight"].detach())) <= 1.5 * float(ref.max()) + 1e-6  # the clamp bounds it


def test_dmd_gradient_is_the_normalised_score_difference_and_vanishes_when_the_scores_agree():
    scheduler = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    alphas = scheduler.alphas_cumprod
    x = torch.randn(4, 1, 8, 8, requires_grad=True)
    real = lambda a, t: 0.3 * a  # noqa: E731  (two different closed-form 'scores')
    fake = lambda a, t: -0.2 * a  # noqa: E731
    loss = sign.dmd_loss(x, real, fake, scheduler, torch.Generator().manual_seed(0))
    (g,) = torch.autograd.grad(loss, x)
    gen = torch.Generator().manual_seed(0)  # the same t and noise, by hand
    t = torch.randint(2, 98, (4,), generator=gen)
    noise = torch.randn(x.shape, generator=gen)
    ab = alphas[t].view(-1, 1, 1, 1)
    xt = ab.sqrt() * x.detach() + (1 - ab).sqrt() * noise
    x0r = (xt - (1 - ab).sqrt() * 0.3 * xt) / ab.sqrt()
    x0f = (xt - (1 - ab).sqrt() * -0.2 * xt) / ab.sqrt()
    w = 1 / (x.detach() - x0r).abs().flatten(1).mean(1).view(-1, 1, 1, 1)
    torch.testing.assert_close(g, (x0f - x0r) * w / 4)
    same = sign.dmd_loss(x, real, real, scheduler, torch.Generator().manual_seed(0))
    assert float(torch.autograd.grad(same, x)[0].abs().max()) == 0.0


def test_denoising_loss_is_the_epsilon_mse_of_the_schedulers_forward_process():
    """The fake score's objective, by hand: x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, loss |eps_hat - eps|^2."""
    scheduler = DDPMScheduler(num_train_timesteps=50, beta_schedule="scaled_linear")
    x0 = torch.randn(5, 1, 8, 8)
    eps_fn = lambda a, t: 0.5 * a + 0.01 * t.view(-1, 1, 1, 1)  # noqa: E731
    loss = sign.denoising_loss(eps_fn, x0, scheduler, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    t = torch.randint(0, 50, (5,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    ab = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    want = ((eps_fn(ab.sqrt() * x0 + (1 - ab).sqrt() * noise, t) - noise) ** 2).mean()
    torch.testing.assert_close(loss, want)


# ---------------------------------------------------------------------------- the ablation ladder


def _ladder_parts():
    from studio.nets.idempotent import IdempotentNet
    from tests.conftest import tiny_digits_unet

    f = IdempotentNet(tiny_digits_unet().train().requires_grad_(True))
    teacher = tiny_digits_unet()
    fake = sign.build_fake_score(teacher)
    gen = torch.Generator().manual_seed(0)
    batch = {"x": torch.randn(3, 1, 16, 16), "z": torch.randn(3, 1, 16, 16), "target": torch.randn(3, 1, 16, 16)}
    return f, sign.frozen_copy(f), fake, teacher, batch, noise_scheduler(), gen


def test_the_ladders_rungs_each_add_one_part_and_switched_off_terms_are_absent():
    assert sign.LADDER["distil"] == {"reg"}
    assert sign.LADDER["distil+ign"] - sign.LADDER["distil"] == {"rec", "idem", "tight"}
    assert sign.LADDER["distil+ign+dmd"] - sign.LADDER["distil+ign"] == {"dmd"}
    f, f_copy, fake, teacher, batch, sched, gen = _ladder_parts()
    for rung, use in sign.LADDER.items():
        got = sign.sign_step(f, f_copy, fake, teacher, batch, sched, gen, terms=use)
        assert set(got) == use, rung
    # without dmd no score network is needed, without idem/tight no frozen copy: passing None must not fail
    got = sign.sign_step(f, None, None, None, batch, sched, gen, terms=sign.LADDER["distil"])
    assert set(got) == {"reg"}
    torch.testing.assert_close(got["reg"], sign.distance(f(batch["z"]), batch["target"]).mean())
    # the recipe's phases are unchanged: warm-up = reg + rec, joint = everything
    assert set(sign.sign_step(f, f_copy, fake, teacher, batch, sched, gen, joint=False)) == {"reg", "rec"}
    assert set(sign.sign_step(f, f_copy, fake, teacher, batch, sched, gen, joint=True)) == sign.TERMS_ALL
    with pytest.raises(ValueError):
        sign.sign_step(f, f_copy, fake, teacher, batch, sched, gen, terms=frozenset({"reg", "lpips"}))


def test_a_switched_off_term_gives_the_generator_no_gradient():
    """Rung (1)'s gradient is exactly plain distillation's; rung (2)'s is reg + IGN's three, with no DMD in it."""
    f, f_copy, fake, teacher, batch, sched, gen = _ladder_parts()

    def grads(loss):
        f.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in f.parameters()]

    rung1 = sign.sign_step(f, f_copy, fake, teacher, batch, sched, gen, terms=sign.LADDER["distil"])
    by_hand = sign.LAMBDA["reg"] * sign.distance(f(batch["z"]), batch["target"]).mean()
    for a, b in zip(grads(sum(sign.LAMBDA[k] * v for k, v in rung1.items())), grads(by_hand)):
        torch.testing.assert_close(a, b)
    sign.sync(f_copy, f)
    rung2 = sign.sign_step(f, f_copy, fake, teacher, batch, sched, gen, terms=sign.LADDER["distil+ign"])
    full = sign.sign_step(f, f_copy, fake, teacher, batch, sched, gen, terms=sign.LADDER["distil+ign+dmd"])
    without_dmd = sum(sign.LAMBDA[k] * v for k, v in full.items() if k != "dmd")
    for a, b in zip(grads(sum(sign.LAMBDA[k] * v for k, v in rung2.items())), grads(without_dmd)):
        torch.testing.assert_close(a, b)


def test_ladder_runs_share_the_warm_up_then_differ_only_in_their_terms(tmp_path, monkeypatch):
    import json

    from studio.nets import unets
    from studio.nets.idempotent import IdempotentNet
    from studio.train.common import Checkpoint
    from tests.conftest import tiny_digits_unet

    monkeypatch.setattr(unets, "digits_unet", lambda: tiny_digits_unet().train())
    monkeypatch.setattr(sign, "teacher_unet", lambda: tiny_digits_unet())
    monkeypatch.setattr(sign, "BATCH", 4)
    pairs = (torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(1)),
             torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(2)).clamp(-1, 1))
    monkeypatch.setattr(sign, "teacher_pairs", lambda n, root=None: (pairs[0][:n], pairs[1][:n]))
    runs = {}
    for rung in ("distil", "distil+ign+dmd", "distil+ign"):
        out = sign.train("sign-digits", warmup=1, joint=2, root=tmp_path, export=False, progress=False, n_pairs=8,
                         ladder=rung, checkpoint_every=1)
        assert out["steps"] == 3 and out["recipe"]["terms"] == sorted(sign.LADDER[rung])
        runs[rung] = out
    warm = Checkpoint(sign.ladder_run_name("distil", 1, 0, 8), tmp_path)
    assert json.loads(warm.meta_path.read_text())["step"] == 1  # trained once, copied into every rung
    # only the rung with distribution matching has (and trains) a fake score
    dirs = {r: tmp_path / sign.ladder_run_name(r, 1, 2, 8) for r in runs}
    assert [r for r, d in dirs.items() if (d / "fake.safetensors").exists()] == ["distil+ign+dmd"]
    from safetensors.torch import load_file

    fake = load_file(dirs["distil+ign+dmd"] / "fake.safetensors")
    teacher = tiny_digits_unet().state_dict()
    assert any(not torch.equal(fake[k], teacher[k]) for k in teacher)

    def weights(rung):
        f = IdempotentNet(tiny_digits_unet())
        f.load_state_dict(load_file(tmp_path / sign.ladder_run_name(rung, 1, 2, 8) / "f.safetensors"))
        return torch.cat([p.flatten() for p in f.parameters()])

    assert not torch.equal(weights("distil"), weights("distil+ign"))
    # (DMD's first step is zero: the fake score starts as the teacher; it differs from the second step on)
    assert not torch.equal(weights("distil+ign"), weights("distil+ign+dmd"))


# ---------------------------------------------------------------------------- the stability runs


def test_stability_runs_train_on_their_own_pair_block_or_from_the_teachers_weights(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from studio.nets import unets
    from tests.conftest import tiny_digits_unet

    assert sign.pair_range(4) == sign.pair_range(4, 0) == (0, 4) and sign.pair_range(4, 2) == (8, 12)
    blocks = [set(range(*sign.pair_range(4, b))) for b in range(3)]
    assert not (blocks[0] & blocks[1] or blocks[1] & blocks[2] or blocks[0] & blocks[2])
    names = [sign.run_name_of("sign-digits", 1, 300, 100), sign.run_name_of("sign-digits", 1, 300, 100, n_pairs=4,
                                                                             pair_block=1),
             sign.run_name_of("ign-digits", 1, 0, 400), sign.run_name_of("ign-digits", 1, 0, 400, init="teacher")]
    assert len(set(names)) == 4 and names[0] == "sign-digits-seed1-300-100" and names[2] == "ign-digits-seed1-0-400"
    assert sign.run_name_of("ign-digits", init="random") == "ign-digits"  # the zoo's runs keep their names

    teacher = tiny_digits_unet()
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.5)  # unlike a freshly drawn tiny UNet
    monkeypatch.setattr(unets, "digits_unet", lambda: tiny_digits_unet().train())
    monkeypatch.setattr(sign, "teacher_unet", lambda: teacher)
    monkeypatch.setattr(sign, "BATCH", 4)
    tagged = torch.arange(16.0).view(16, 1, 1, 1).expand(16, 1, 16, 16)  # pair k's noise and target are all k
    monkeypatch.setattr(sign, "teacher_pairs", lambda n, root=None: (tagged[:n], tagged[:n]))
    seen, step = [], sign.sign_step

    def spy(f, f_copy, fake, teacher, batch, *a, **kw):
        seen.append(batch["z"].flatten(1)[:, 0])
        return step(f, f_copy, fake, teacher, batch, *a, **kw)

    monkeypatch.setattr(sign, "sign_step", spy)
    out = sign.train("sign-digits", 0, warmup=2, joint=0, root=tmp_path, export=False, progress=False, n_pairs=4,
                     pair_block=2)
    assert out["run"] == "sign-digits-seed0-2-0-p4b2" and out["recipe"]["pairs"] == [8, 12]
    assert set(torch.cat(seen).tolist()) <= {8.0, 9.0, 10.0, 11.0}  # only block 2's pairs
    with pytest.raises(ValueError):
        sign.train("ign-digits", 0, warmup=0, joint=1, root=tmp_path, pair_block=1)

    def start(init):  # f after one Adam step (each weight moves by about lr = 1e-4)
        out = sign.train("ign-digits", 0, warmup=0, joint=1, root=tmp_path, export=False, progress=False, init=init)
        return load_file(tmp_path / out["run"] / "f.safetensors"), out

    ref = {f"unet.{k}": v for k, v in teacher.state_dict().items()}
    from_teacher, out = start("teacher")
    assert out["run"] == "ign-digits-seed0-0-1-initteacher" and out["recipe"]["init"] == "teacher"
    assert max(float((from_teacher[k] - v).abs().max()) for k, v in ref.items()) < 1e-3
    from_random, _ = start(None)
    assert max(float((from_random[k] - v).abs().max()) for k, v in ref.items()) > 0.1
