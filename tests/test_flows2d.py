"""studio.core.flows2d: the VP <-> RF change of variables, exact likelihoods by -div v, flow maps, and the
small trained fields, checked against the closed forms of an exact 2-D mixture."""

from __future__ import annotations

import pytest
import torch

from studio.core import flows2d as F
from studio.core import toy2d as T


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tensors of a few hundred numbers: a second thread (conftest sets two) only adds synchronisation, and
    on a loaded machine it made these tests ten times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def gmm():
    return T.toy("gaussians")


def exact_eps(gmm, path):
    return lambda x, t: T.exact(gmm, "eps", x, t, path)


def test_rf_time_and_its_inverse_round_trip():
    vp = T.vp_path()
    for t in (1e-3, 0.05, 0.3, 0.7, 1.0):
        assert F.time_from_rf(F.rf_time(t, vp), vp) == pytest.approx(t, abs=1e-10)
    with pytest.raises(ValueError, match="outside"):
        F.time_from_rf(0.999, vp)  # VP's alpha never reaches 0 on [0, 1]


def test_the_exact_noise_prediction_is_the_same_in_vp_and_rf_coordinates(gmm):
    vp, rf = T.vp_path(), T.rf_path()
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=T.DTYPE)
    for t in (0.02, 0.2, 0.5, 0.9):
        x_rf, t_rf = F.vp_to_rf(x, t, vp)
        assert torch.allclose(T.exact(gmm, "eps", x, t, vp), T.exact(gmm, "eps", x_rf, t_rf, rf), atol=1e-10)
        back, t_back = F.rf_to_vp(x_rf, t_rf, vp)
        assert torch.allclose(back, x, atol=1e-10) and t_back == pytest.approx(t, abs=1e-10)


def test_a_vp_pf_ode_trajectory_maps_onto_the_rf_ode_trajectory_of_the_same_data(gmm):
    vp, rf = T.vp_path(), T.rf_path()
    z = T.prior(100, 2, vp, torch.Generator().manual_seed(1))
    times = vp.grid(100)
    vp_traj = F.rk4(F.views(exact_eps(gmm, vp), vp).velocity, z, times)
    x_rf, _ = F.vp_to_rf(z, vp.t_max, vp)
    rf_times = torch.tensor([F.rf_time(t, vp) for t in times.tolist()], dtype=T.DTYPE)
    rf_traj = F.rk4(lambda x, t: T.exact(gmm, "velocity", x, t, rf), x_rf, rf_times)
    gaps = [(F.vp_to_rf(a, t, vp)[0] - b).abs().max() for a, b, t in zip(vp_traj, rf_traj, times.tolist())]
    assert max(gaps) < 1e-4
    # and the endpoints really moved: the test is not comparing two standing points
    assert (vp_traj[-1] - z).norm(dim=1).mean() > 0.3


def test_the_rf_view_of_a_vp_eps_field_is_the_exact_rf_velocity(gmm):
    vp, rf = T.vp_path(), T.rf_path()
    views = F.views(exact_eps(gmm, vp), vp)
    x = torch.randn(40, 2, generator=torch.Generator().manual_seed(2), dtype=T.DTYPE)
    for t_rf in (0.05, 0.5, 0.95):
        assert torch.allclose(views.velocity_rf(x, t_rf), T.exact(gmm, "velocity", x, t_rf, rf), atol=1e-8)
    assert torch.allclose(views.score(x, 0.4), gmm.score(x, vp.alpha(0.4), vp.sigma(0.4)), atol=1e-10)


@pytest.mark.parametrize("name, tol", [("rf", 1e-3), ("vp", 1e-2)])
def test_the_log_likelihood_from_minus_div_v_matches_the_mixtures_log_density(gmm, name, tol):
    path = T.PATHS[name]()
    x = gmm.sample(40, torch.Generator().manual_seed(3))
    ll = F.log_likelihood(lambda y, t: T.exact(gmm, "velocity", y, t, path), x, path, steps=100)
    truth = gmm.log_prob(x, path.alpha(path.t_min), path.sigma(path.t_min))
    assert (ll - truth).abs().max() < tol
    assert truth.std() > 0.5  # the points have clearly different densities, so matching them means something


def test_the_divergence_is_the_trace_of_the_jacobian():
    a = torch.tensor([[1.0, 2.0], [-3.0, 0.5]], dtype=T.DTYPE)
    x = torch.randn(5, 2, dtype=T.DTYPE)
    v, div = F.divergence(lambda y, t: y @ a.T + t * y ** 2, x, 0.5)
    assert torch.allclose(div, 1.5 + 0.5 * 2 * x.sum(1))
    assert torch.allclose(v, x @ a.T + 0.5 * x ** 2)


def test_the_exact_flow_map_is_a_semigroup_with_the_velocity_as_its_tangent(gmm):
    rf = T.rf_path()
    v = lambda x, t: T.exact(gmm, "velocity", x, t, rf)
    x = T.prior(60, 2, rf, torch.Generator().manual_seed(4))
    direct = F.flow_map(v, x, 0.95, 0.05, 200)
    composed = F.flow_map(v, F.flow_map(v, x, 0.95, 0.4, 100), 0.4, 0.05, 100)
    assert (direct - composed).abs().max() < 1e-6
    assert torch.equal(F.flow_map(v, x, 0.4, 0.4), x)
    # tangent condition: (Psi_{s->s+h}(x) - x) / h -> v(x, s), with an error shrinking like h
    errs = [((F.flow_map(v, x, 0.5, 0.5 - h, 1) - x) / -h - v(x, 0.5)).abs().max() for h in (1e-2, 1e-3)]
    assert errs[1] < 1e-2 and errs[1] < errs[0] / 5


def test_path_length_of_a_straight_run_is_its_chord():
    xs = torch.linspace(0, 1, 11, dtype=T.DTYPE)[:, None, None] * torch.tensor([[3.0, 4.0]], dtype=T.DTYPE)
    assert torch.allclose(F.path_length(xs), torch.tensor([5.0], dtype=T.DTYPE))
    zigzag = torch.tensor([[[0.0, 0.0]], [[1.0, 1.0]], [[2.0, 0.0]]], dtype=T.DTYPE)
    assert F.path_length(list(zigzag)).item() == pytest.approx(2 * 2 ** 0.5)


def test_a_short_denoising_run_learns_a_noise_predictor(gmm):
    field = F.train_eps(gmm, steps=300, batch=128, width=64, seed=0)
    first, last = sum(field.losses[:30]) / 30, sum(field.losses[-30:]) / 30
    assert last < 0.8 * first
    vp = T.vp_path()
    x = gmm.sample(400, torch.Generator().manual_seed(5))
    eps = torch.randn(400, 2, generator=torch.Generator().manual_seed(6), dtype=T.DTYPE)
    a, s = vp.alpha(0.3), vp.sigma(0.3)
    pred = field(a * x + s * eps, 0.3)
    assert pred.dtype == T.DTYPE and ((pred - eps) ** 2).sum(1).mean() < 0.5 * (eps ** 2).sum(1).mean()


def test_a_learned_flow_map_beats_one_euler_step(gmm):
    rf = T.rf_path()
    v = lambda x, t: T.exact(gmm, "velocity", x, t, rf)
    times = rf.grid(8)
    states = F.trajectories(v, T.prior(500, 2, rf, torch.Generator().manual_seed(7)), times, 4)
    fm = F.train_flow_map(v, states, times, steps=300, batch=128, width=64)
    z = T.prior(200, 2, rf, torch.Generator().manual_seed(8))
    target = F.flow_map(v, z, rf.t_max, rf.t_min, 64)
    one_step = fm.sample(z, [rf.t_max, rf.t_min])
    euler = z + (rf.t_min - rf.t_max) * v(z, rf.t_max)
    assert (one_step - target).norm(dim=1).mean() < 0.5 * (euler - target).norm(dim=1).mean()
