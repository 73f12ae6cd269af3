"""Theory: the playground's one field four ways (the particles move identically whichever
parametrisation is predicted), samplers that reach the exact distribution, the time slider, and the
teleport comparison."""

from __future__ import annotations

import numpy as np
import pytest

from studio.core.params import ParamError
from studio.methods import theory
from tests.contract import MethodContract


class TestTheoryContract(MethodContract):
    method_id = "theory"
    bad = [({"steps": 0}, "Steps"), ({"time": 1.5}, "Time"), ({"particles": 0}, "Particles")]

    @pytest.fixture
    def manager(self, tiny_manager):
        return tiny_manager

    def params(self):
        return theory.Params(particles=50, steps=20, seed=3)


def play(**kw) -> theory.PlaygroundResult:
    *progress, result = theory.run(theory.Params(**kw))
    assert progress and progress[-1].step == progress[-1].total
    return result


@pytest.mark.parametrize("process", ["vp-ode", "vp-sde", "rf-ode"])
def test_every_parametrisation_moves_the_particles_identically(process):
    runs = {k: play(parametrisation=k, process=process, particles=100, steps=40, seed=1) for k in
            ("eps", "x0", "score", "velocity")}
    for k, r in runs.items():
        np.testing.assert_allclose(r.states, runs["eps"].states, atol=1e-5, err_msg=k)
        assert r.mismatch < 1e-9
        # each panel's field converts to one and the same velocity
        for other in r.velocity_from.values():
            np.testing.assert_allclose(other, r.velocity_from["velocity"], atol=1e-9)


@pytest.mark.parametrize("process", ["vp-ode", "vp-sde", "rf-ode"])
def test_the_samplers_reach_the_exact_distribution_and_few_steps_do_not(process):
    good = play(process=process, distribution="gaussians", particles=1000, steps=200, seed=2)
    assert good.energy < 2 * good.energy_floor + 0.005, (good.energy, good.energy_floor)
    bad = play(process=process, distribution="gaussians", particles=1000, steps=2, seed=2)
    assert bad.energy > 3 * good.energy


def test_the_time_slider_shows_the_stored_particles_at_another_time():
    r = play(particles=60, steps=50, time=0.9)
    later = theory.at_time(r, 0.0)
    assert later.shown == len(r.times) - 1 and r.shown == int(np.abs(r.times - 0.9).argmin())
    assert later.states is r.states and later.parameters["time"] == 0.0
    assert not np.allclose(later.fields["score"], r.fields["score"])
    # near the data the density is the data's: its mass sits where the exact samples are
    axis = later.density_axis
    peak = np.unravel_index(later.density.argmax(), later.density.shape)
    point = np.array([axis[peak[1]], axis[peak[0]]])
    assert np.min(np.linalg.norm(later.reference - point, axis=1)) < 0.2
    with pytest.raises(ParamError, match="Time t"):
        theory.at_time(r, -0.1)


def test_heun_uses_two_evaluations_a_step_and_lands_closer_in_few_steps():
    euler = play(process="rf-ode", distribution="ring", particles=400, steps=8, seed=4)
    heun = play(process="rf-ode", distribution="ring", particles=400, steps=8, seed=4, heun=True)
    assert euler.evaluations == 8 and heun.evaluations == 16
    assert heun.energy < euler.energy


def test_teleport_comparison_uses_the_same_seeds_and_fewer_evaluations(zoo_manager):
    import dataclasses

    p = dataclasses.replace(theory.teleport_defaults(), steps=6, teleport=2, n_images=2, preview_every=0)
    *progress, cmp = theory.compare_teleport(p, zoo_manager)
    assert progress[-1].step == progress[-1].total == 2 * 6 - 2
    assert cmp.evaluations == (12, 8)
    assert cmp.full.seeds == cmp.teleported.seeds and cmp.moved.shape == (2,)
    assert cmp.teleported.parameters["teleport"] == 2 and cmp.full.parameters["teleport"] == 0
    assert 0 < float(cmp.moved.max()) < 0.5
    with pytest.raises(ParamError, match="at least 1"):
        list(theory.compare_teleport(dataclasses.replace(p, teleport=0), zoo_manager))
