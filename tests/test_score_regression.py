"""Score estimation as regression (studio.core.score_regression): the network's GD step, its tangent kernel,
the closed-form kernel-GD predictor, the stopping rule and the exact targets."""

from __future__ import annotations

import math

import torch

from studio.core import score_regression as sr
from studio.core import toy2d


def _inputs(n: int, seed: int, d: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return sr.features(torch.randn(n, d, generator=g, dtype=sr.DTYPE), 3 * torch.rand(n, generator=g, dtype=sr.DTYPE))


def test_the_parametric_form_of_the_exact_posterior_mean_is_the_exact_score():
    gmm = toy2d.toy("gaussians")
    data = sr.make_triples(gmm, 50, seed=0)
    alpha, sigma = sr.ou(data.t)
    for i in range(0, 50, 7):
        want = gmm.score(data.xt[i:i + 1], float(alpha[i]), float(sigma[i]))
        got = sr.score_from_x0(data.target[i:i + 1], data.xt[i:i + 1], data.t[i:i + 1])
        torch.testing.assert_close(got, want)
    assert sr.true_error(data.target, data) == 0.0


def test_labels_are_unbiased_for_the_posterior_mean():
    data = sr.make_triples(toy2d.toy("gaussians"), 4000, seed=1)
    noise = data.x0 - data.target
    se = noise.std(0) / math.sqrt(4000)
    assert (noise.mean(0).abs() < 4 * se).all()
    assert 0.5 < data.label_noise < 1.2  # far from zero: the labels are noisy


def test_gd_step_is_gradient_descent_on_the_half_mean_squared_error():
    z, y = _inputs(16, 0), torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=sr.DTYPE)
    net = sr.init_net(64, 2, seed=3)
    W = net.W.clone().requires_grad_(True)
    loss = 0.5 * (torch.relu(z @ W.T) @ net.a / 8 - y).pow(2).sum(1).mean()
    loss.backward()
    reported = sr.gd_step(net, z, y, eta=0.3)
    assert math.isclose(reported, float(loss.detach()), rel_tol=1e-12)
    torch.testing.assert_close(net.W, (W - 0.3 * W.grad).detach())


def test_symmetric_init_starts_at_zero_and_random_init_does_not():
    z = _inputs(10, 0)
    assert sr.init_net(256, 2, seed=0)(z).abs().max() < 1e-12
    assert sr.init_net(256, 2, seed=0, symmetric=False)(z).abs().max() > 0.1


def test_analytic_ntk_is_the_wide_limit_of_the_empirical_one():
    z = _inputs(6, 2)
    emp = sr.empirical_ntk(sr.init_net(40000, 2, seed=0), z, z)  # (6, 6, 2, 2)
    k = sr.ntk(z, z)
    scale = k.abs().max()
    for j in range(2):
        assert (emp[:, :, j, j] - k).abs().max() < 0.03 * scale
    assert emp[:, :, 0, 1].abs().max() < 0.03 * scale  # random-sign outputs decouple
    narrow = sr.empirical_ntk(sr.init_net(40, 2, seed=0), z, z)
    assert (narrow[:, :, 0, 0] - k).abs().max() > 3 * (emp[:, :, 0, 0] - k).abs().max()


def test_kernel_gd_starts_at_f0_takes_gd_steps_and_interpolates_in_the_limit():
    z = _inputs(20, 4)
    g = torch.Generator().manual_seed(5)
    y, f0 = torch.randn(20, 2, generator=g, dtype=sr.DTYPE), torch.randn(20, 2, generator=g, dtype=sr.DTYPE)
    kg = sr.KernelGD(z, y, eta=0.5, f0=f0)
    basis = kg.basis(z)
    torch.testing.assert_close(kg.predict(basis, 0, f0), f0)
    K = sr.ntk(z, z)
    one = f0 + 0.5 / 20 * K @ (y - f0)  # one explicit GD step of the kernel model
    two = one + 0.5 / 20 * K @ (y - one)
    torch.testing.assert_close(kg.predict(basis, 1, f0), one)
    torch.testing.assert_close(kg.predict(basis, 2, f0), two)
    torch.testing.assert_close(kg.predict(basis, 1e15, f0), y, atol=1e-6, rtol=0)
    assert kg.max_stable_eta() == 2 / float(kg.eigenvalues.max())


def test_a_wide_net_tracks_the_kernel_predictor_early_and_a_narrow_one_less():
    data = sr.make_triples(toy2d.toy("gaussians"), 32, seed=0)
    kg = sr.KernelGD(data.z, data.x0, eta=0.5)
    fk = kg.predict(kg.basis(data.z), 20)
    gaps = {}
    for m in (64, 8192):
        net = sr.init_net(m, 2, seed=1)
        for _ in range(20):
            sr.gd_step(net, data.z, data.x0, eta=0.5)
        gaps[m] = float((net(data.z) - fk).pow(2).sum(1).mean().sqrt())
    size = float(fk.pow(2).sum(1).mean().sqrt())
    assert gaps[8192] < 0.05 * size
    assert gaps[8192] < gaps[64] / 3


def test_stopping_rule_is_the_first_crossing_and_stops_earlier_for_noisier_labels():
    data = sr.make_triples(toy2d.toy("gaussians"), 64, seed=2)
    kg = sr.KernelGD(data.z, data.x0, eta=1.0)
    lam = kg.eigenvalues
    k = sr.stopping_step(lam, 1.0, data.label_noise, max_steps=10 ** 6)
    assert 1 <= k < 10 ** 6

    def crossed(j):
        r = torch.sqrt(torch.minimum(lam, torch.tensor(1.0 / j, dtype=lam.dtype)).mean())
        return bool(r > 1 / (2 * math.e * data.label_noise * j))
    assert crossed(k) and not any(crossed(j) for j in range(1, k))
    assert sr.stopping_step(lam, 1.0, 10 * data.label_noise) <= k <= sr.stopping_step(lam, 1.0, data.label_noise / 10)
    assert sr.stopping_step(lam, 1.0, 1e-9, max_steps=1000) == 1000  # noiseless labels: no crossing
