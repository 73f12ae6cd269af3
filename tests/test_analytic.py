"""The closed-form references of the Gaussian-score diagnostic (studio.core.analytic): each denoiser is
the exact posterior mean of its model, and the explained variance is the official per-sample measure."""

from __future__ import annotations

import math

import pytest
import torch

from studio.core import analytic, gaussian, toy2d
from studio.train.diffusion import noise_scheduler


def low_rank_data(n=600, d=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    basis = torch.randn(d, 3, generator=gen)
    return (torch.randn(n, 3, generator=gen) @ basis.T + 0.1 * torch.randn(n, d, generator=gen)).reshape(n, 1, 3, 4)


def test_fit_svd_gives_the_eigendecomposition_fit_and_log_density_is_the_noised_normal():
    x = low_rank_data()
    a, b = gaussian.fit(x, rank=5), analytic.fit_svd(x, rank=5)
    assert torch.allclose(a.eigvals, b.eigvals, rtol=1e-4) and a.residual == pytest.approx(b.residual, rel=1e-4)
    assert torch.allclose((a.eigvecs.T @ b.eigvecs).abs(), torch.eye(5), atol=1e-4)
    alpha, sigma = 0.6, 0.8
    u = b.eigvecs.double()
    cov = u @ torch.diag(b.eigvals.double()) @ u.T + b.residual * (torch.eye(12, dtype=torch.float64) - u @ u.T)
    normal = torch.distributions.MultivariateNormal(alpha * b.mean.double(), alpha ** 2 * cov + sigma ** 2 * torch.eye(12))
    pts = x[:7] * 1.3
    assert torch.allclose(gaussian.log_density(b, pts, alpha, sigma), normal.log_prob(pts.reshape(7, -1).double()),
                          atol=1e-6)


def test_the_mixture_denoiser_is_the_exact_posterior_mean_of_the_mixture():
    gmm = toy2d.toy("gaussians")
    comps = [gaussian.GaussianStats(m.float(), torch.full((2,), float(s) ** 2), torch.eye(2), 0.0, (2,), 100)
             for m, s in zip(gmm.means, gmm.stds)]
    mix = analytic.Mixture(comps, gmm.weights)
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(1)) * 1.5
    for alpha in (0.95, 0.5, 0.1):
        sigma = math.sqrt(1 - alpha ** 2)
        ours = analytic.mixture_denoise(mix, x, alpha, sigma)
        assert torch.allclose(ours.double(), gmm.denoise(x.double(), alpha, sigma), atol=1e-5)
    # one component: the Gaussian's own denoiser
    one = analytic.Mixture(comps[:1], torch.ones(1, dtype=torch.float64))
    assert torch.allclose(analytic.mixture_denoise(one, x, 0.5, 0.8), gaussian.denoise(comps[0], x, 0.5, 0.8), atol=1e-6)


def test_fit_mixture_finds_separated_clusters():
    gen = torch.Generator().manual_seed(2)
    centres = torch.tensor([[3.0, 0, 0, 0], [-3.0, 0, 0, 0], [0, 3.0, 0, 0]])
    x = (centres.repeat_interleave(200, 0) + 0.2 * torch.randn(600, 4, generator=gen))
    mix = analytic.fit_mixture(x, 3)
    found = torch.stack([c.mean for c in mix.components])
    assert torch.cdist(found, centres).min(1).values.max() < 0.1
    assert torch.allclose(mix.weights, torch.full((3,), 1 / 3, dtype=torch.float64), atol=1e-6)


def test_the_delta_denoiser_returns_the_nearest_training_image_at_low_noise_and_the_mean_at_high():
    train = low_rank_data(n=50)
    x_t = 0.999 * train[:5] + 0.01 * torch.randn(5, 1, 3, 4, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(analytic.delta_denoise(train, x_t, 0.999, 0.045), train[:5], atol=1e-4)
    far = analytic.delta_denoise(train, torch.randn(3, 1, 3, 4), 1e-7, 1.0)
    assert torch.allclose(far, train.mean(0).expand(3, -1, -1, -1), atol=1e-3)


def test_explain_gives_one_for_the_reference_itself_and_the_official_measure():
    x = low_rank_data()
    stats = gaussian.fit(x)
    abar = noise_scheduler().alphas_cumprod
    learned = torch.randn(8, 12)
    assert torch.allclose(analytic.explained_variance(learned, learned), torch.ones(8, dtype=torch.float64))
    assert torch.allclose(analytic.explained_variance(learned, torch.zeros(8, 12)), torch.zeros(8, dtype=torch.float64))

    def gauss(x_t, t):
        a = float(abar[t]) ** 0.5
        return gaussian.denoise(stats, x_t, a, (1 - a * a) ** 0.5)

    refs = analytic.references_for(stats, x[:200], clusters=(3,))
    rows = analytic.explain(gauss, refs, x[200:400], abar, [50, 500, 950])
    for row in rows:
        assert row["gaussian/score"][0] == pytest.approx(1.0) and row["gaussian/denoiser"][0] == pytest.approx(1.0)
    # the mean explains the score at high noise (the shared -x / sigma^2 term) but not at low noise
    assert rows[-1]["mean/score"][0] > 0.9 > rows[0]["mean/score"][0]
    assert rows[0]["delta/score"][0] < rows[0]["gaussian/score"][0]
