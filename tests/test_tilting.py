"""studio.core.tilting: the exact tilted mixture, the guided score fields and the measurements, each checked
against an independent computation (a grid, brute-force sampling, the posterior covariance)."""

from __future__ import annotations

import math

import pytest
import torch

from studio.core import tilting, toy2d
from studio.core.toy2d import DTYPE, GMM

THETA = torch.tensor([1.0, 0.5], dtype=DTYPE)
TAU = 0.7


@pytest.fixture(autouse=True)
def one_thread():
    """Every tensor here is tiny: on a busy 2-core machine a second intra-op thread (conftest's default) made
    these tests about 30 times slower, waiting on the other core."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small_mixture() -> GMM:
    return GMM(torch.tensor([[-1.0, 0.0], [1.0, 0.3], [0.0, 1.2]], dtype=DTYPE),
               torch.tensor([0.3, 0.5, 0.2], dtype=DTYPE), torch.tensor([0.5, 0.2, 0.3], dtype=DTYPE))


def test_the_tilted_mixture_is_p_data_times_exp_reward_over_tau_normalised_on_a_grid():
    data = small_mixture()
    star = tilting.tilt(data, THETA, TAU)
    g = torch.linspace(-5, 6, 301, dtype=DTYPE)
    grid = torch.cartesian_prod(g, g)
    cell = float(g[1] - g[0]) ** 2
    unnorm = data.log_prob(grid) + grid @ THETA / TAU
    log_z = tilting.log_normaliser(data, THETA, TAU)
    assert math.log(float(unnorm.exp().sum()) * cell) == pytest.approx(log_z, abs=1e-4)  # Z by quadrature
    assert torch.allclose(star.log_prob(grid), unnorm - log_z, atol=1e-10)
    assert float(star.weights.sum()) == pytest.approx(1.0)
    # the reweighting favours the component the reward points at; the means move along theta
    assert int(star.weights.argmax()) == 1 and torch.allclose(star.means - data.means,
                                                             (data.stds ** 2)[:, None] * THETA / TAU)


def test_gradient_guidance_at_one_over_tau_is_the_exact_tilt_for_one_gaussian_and_not_for_a_mixture():
    path = toy2d.vp_path()
    one = GMM(torch.tensor([[0.3, -0.2]], dtype=DTYPE), torch.tensor([0.4], dtype=DTYPE), torch.ones(1, dtype=DTYPE))
    reward = tilting.linear_reward(THETA)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    for data, exact_expected in ((one, True), (small_mixture(), False)):
        guided = tilting.gradient_guided_score(data, reward, 1 / TAU, path)
        naive = tilting.naive_tilt_score(data, reward, 1 / TAU, path)
        exact = tilting.score(tilting.tilt(data, THETA, TAU), path)
        for t in (0.1, 0.3, 0.6):
            gap = (guided(x, t) - exact(x, t)).abs().max()
            assert (gap < 1e-9) == exact_expected, (t, float(gap))
            assert (naive(x, t) - exact(x, t)).abs().max() > 0.05  # the clean tilt is wrong once noised
        # at the data end every rule agrees with the exact tilt's score
        t = path.t_min
        assert torch.allclose(naive(x, t), exact(x, t), atol=1e-3 * float(exact(x, t).abs().max()))


def test_the_autograd_look_ahead_is_the_posterior_covariance_times_alpha_over_sigma_squared():
    """Second-order Tweedie: d E[x0 | x_t] / dx_t = alpha Cov[x0 | x_t] / sigma^2, computed by hand."""
    data, path = small_mixture(), toy2d.vp_path()
    reward = tilting.linear_reward(THETA)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    eta, t = 2.0, 0.4
    a, s = path.alpha(t), path.sigma(t)
    term = tilting.gradient_guided_score(data, reward, eta, path)(x, t) - data.score(x, a, s)
    r = data.responsibilities(x, a, s)
    var = a ** 2 * data.stds ** 2 + s ** 2
    post_var = data.stds ** 2 * s ** 2 / var  # (K,)
    post_mean = data.means[None] + (a * data.stds ** 2 / var)[None, :, None] * (x[:, None] - a * data.means[None])
    m = (r[:, :, None] * post_mean).sum(1)
    second = (r[:, :, None, None] * (post_var[None, :, None, None] * torch.eye(2, dtype=DTYPE)
                                      + post_mean[..., None] * post_mean[:, :, None])).sum(1)
    cov = second - m[:, :, None] * m[:, None]
    assert torch.allclose(term, eta * a / s ** 2 * cov @ THETA, atol=1e-9)


def test_eta_zero_guidance_is_the_unguided_sampler():
    data, path = small_mixture(), toy2d.vp_path()
    reward = tilting.linear_reward(THETA)
    plain = tilting.sample(tilting.score(data, path), path, 200, steps=20, seed=3)
    for guided in (tilting.gradient_guided_score(data, reward, 0.0, path),
                   tilting.naive_tilt_score(data, reward, 0.0, path)):
        assert torch.allclose(tilting.sample(guided, path, 200, steps=20, seed=3), plain, atol=1e-12)


def test_energy_distances_match_brute_force_sampling():
    a = small_mixture()
    b = tilting.tilt(a, THETA, TAU)
    exact = tilting.gmm_energy_distance(a, b)
    assert tilting.gmm_energy_distance(a, a) == pytest.approx(0.0, abs=1e-12)
    gen = torch.Generator().manual_seed(2)
    brute = toy2d.energy_distance(a.sample(3000, gen), b.sample(3000, gen))  # V-statistic, slightly high
    assert exact > 0.1 and brute == pytest.approx(exact, rel=0.08)
    draws = torch.tensor([tilting.energy_distance_to(a.sample(1000, gen), b) for _ in range(8)])
    assert float(draws.mean()) == pytest.approx(exact, rel=0.05)
    null = torch.tensor([tilting.energy_distance_to(b.sample(1000, gen), b) for _ in range(8)])
    assert null.abs().max() < 0.02 * exact  # unbiased: no positive offset when the laws agree


def test_sampling_the_tilted_target_with_its_exact_score_reaches_sampling_noise_and_the_optimum():
    data, path = toy2d.toy("gaussians"), toy2d.vp_path()
    theta, tau = torch.tensor([1.0, 0.0], dtype=DTYPE), 0.5
    star = tilting.tilt(data, theta, tau)
    x_t = toy2d.prior(600, 2, path, torch.Generator().manual_seed(4))
    x, logq = tilting.flow_with_log_density(tilting.score(star, path), path, x_t, steps=50)
    ed = tilting.energy_distance_to(x, star)
    noise = max(abs(tilting.energy_distance_to(star.sample(600, torch.Generator().manual_seed(s)), star))
                for s in range(5))
    assert abs(ed) < 3 * noise + 1e-4 and tilting.gmm_energy_distance(data, star) > 0.5
    # the flow's log-density is the target's, and the objective is tau log Z with almost no spread per sample
    end = tilting.noised(star, path.alpha(path.t_min), path.sigma(path.t_min))
    assert float((logq - end.log_prob(x)).abs().median()) < 0.05  # a sign slip in the divergence costs O(1)
    data_end = tilting.noised(data, path.alpha(path.t_min), path.sigma(path.t_min))
    obj = tilting.objective(x, logq, tilting.linear_reward(theta), data_end, tau)
    assert obj["objective"] == pytest.approx(tau * tilting.log_normaliser(data_end, theta, tau), abs=0.01)
    assert obj["objective_sd"] < 0.05


def test_off_support_share_and_class_confidence():
    data = toy2d.toy("gaussians")
    thr = tilting.support_threshold(data, 0.05, n=4000)
    inside = data.sample(4000, torch.Generator().manual_seed(9))
    assert tilting.off_support(inside, data, thr) == pytest.approx(0.05, abs=0.015)
    assert tilting.off_support(inside + torch.tensor([4.0, 0.0], dtype=DTYPE), data, thr) > 0.99
    left, right = GMM(data.means[:4], data.stds[:4], data.weights[:4] / data.weights[:4].sum()), \
        GMM(data.means[4:], data.stds[4:], data.weights[4:] / data.weights[4:].sum())
    conf = tilting.class_confidence(data.means[4:6], [left, right], [0.5, 0.5], 1)
    assert torch.all(conf > 0.99)


def test_the_estimators_recover_the_mixture():
    data = small_mixture()
    x = data.sample(2000, torch.Generator().manual_seed(5))
    em = tilting.fit_em(x, 3)
    assert tilting.gmm_energy_distance(em, data) < 2e-3
    order = em.weights.argsort()
    assert torch.allclose(em.weights[order], data.weights.sort().values, atol=0.03)
    k = tilting.kde(x[:300], 0.2)
    assert k.means.shape == (300, 2) and torch.all(k.stds == 0.2)
    assert tilting.gmm_energy_distance(k, data) < tilting.gmm_energy_distance(tilting.kde(x[:300], 0.8), data)
