"""Classify (Diffusion Classifier): the official adaptive schedule, its cost, shared noise, the noise
space for every prediction type, and clear messages for bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from studio.core.params import ParamError
from studio.data import shapes
from studio.core.sampling import make_scheduler, predicted_eps, run_to_end
from studio.methods import classify
from studio.train.diffusion import noise_scheduler
from tests.contract import MethodContract

T = 1000


def plan_of(n_samples, to_keep):
    return list(zip(n_samples, to_keep))


@pytest.mark.parametrize("n_candidates,n_samples,to_keep,evals", [
    (10, (50, 500), (5, 1), 2750),                         # CIFAR-10's command: 10 x 50 + 5 x 450
    (1000, (50, 100, 500, 1000), (500, 50, 10, 1), 124500),  # ImageNet's: 1000 x 50 + 500 x 100 + 50 x 400 + 10 x 450
    (10, (5, 25), (3, 1), 110),                            # the tab's default on digits: 10 x 5 + 3 x 20
])
def test_the_cost_is_the_official_codes(n_candidates, n_samples, to_keep, evals):
    grid = classify.timestep_grid(T, max(n_samples))
    assert classify.planned_evals(plan_of(n_samples, to_keep), n_candidates, grid, n_trials=1) == evals


def official(eps_fn, x0, n_candidates, n_samples, to_keep, abar, noise, n_trials=1):
    """``eval_prob_adaptive`` transcribed from the reference notes' pseudo-code, one evaluation at a time."""
    max_n = max(n_samples)
    t_to_eval = list(range(T // max_n // 2, T, T // max_n))[:max_n]
    t_evaluated, remaining, data = [], list(range(n_candidates)), {c: [] for c in range(n_candidates)}
    for n, keep in zip(n_samples, to_keep):
        ts = [t for t in t_to_eval[len(t_to_eval) // n // 2::len(t_to_eval) // n][:n] if t not in t_evaluated]
        for c in remaining:
            for t_idx, t in enumerate(ts, start=len(t_evaluated)):
                for k in range(n_trials):
                    eps = noise[n_trials * t_idx + k]
                    x_t = math.sqrt(abar[t]) * x0 + math.sqrt(1 - abar[t]) * eps
                    pred = eps_fn(x_t[None], torch.tensor([t]), torch.tensor([c]))[0]
                    data[c].append(float(((eps - pred) ** 2).mean()))
        t_evaluated += ts
        means = [-np.mean(data[c]) for c in remaining]
        best = torch.topk(torch.tensor(means), k=keep).indices.tolist()
        remaining = [remaining[i] for i in best]
    return remaining[0], {c: np.mean(v) for c, v in data.items()}, sum(len(v) for v in data.values())


def toy_eps_fn(n_candidates: int, shape=(1, 4, 4)):
    """A fixed, candidate- and time-dependent noise predictor (deterministic, cheap)."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(n_candidates, *shape, generator=gen)

    def eps_fn(x_t, t, idx):
        return x_t * (0.5 + 0.1 * w[idx]) + (t.float() / T).view(-1, 1, 1, 1) * w[idx]
    return eps_fn


@pytest.mark.parametrize("n_trials", [1, 2])
def test_the_adaptive_rounds_match_the_official_loop(n_trials):
    n, n_samples, to_keep = 6, (4, 12, 24), (4, 2, 1)
    abar = noise_scheduler().alphas_cumprod
    x0 = torch.randn(1, 4, 4, generator=torch.Generator().manual_seed(1))
    eps_fn = toy_eps_fn(n)
    out = run_to_end(classify.adaptive(eps_fn, x0, n, plan_of(n_samples, to_keep), abar, n_trials=n_trials,
                                       seed=5, batch_size=7))
    noise = torch.randn((max(n_samples) * n_trials, 1, 4, 4), generator=torch.Generator().manual_seed(5))
    pred, errors, evals = official(eps_fn, x0, n, n_samples, to_keep, abar, noise, n_trials)
    assert out["predicted"] == pred and out["evals"] == evals == len(out["table"])
    np.testing.assert_allclose(out["errors"], [errors[c] for c in range(n)], rtol=1e-5)
    assert [r["kept"] for r in out["rounds"]][-1] == [pred]
    assert out["dropped_in"][pred] is None and sorted(d for d in out["dropped_in"] if d) == [1, 1, 2, 2, 3]


def test_every_candidate_meets_the_same_noise_unless_asked_otherwise():
    seen = []

    def eps_fn(x_t, t, idx):
        seen.append((x_t.clone(), t.clone(), idx.clone()))
        return torch.zeros_like(x_t)

    abar, x0 = noise_scheduler().alphas_cumprod, torch.zeros(1, 2, 2)
    for shared in (True, False):
        seen.clear()
        run_to_end(classify.adaptive(eps_fn, x0, 3, [(5, 1)], abar, shared_noise=shared, batch_size=100))
        x_t, t, idx = seen[0]
        same_t = [x_t[(t == t[0]) & (idx == c)] for c in range(3)]  # x0 = 0: x_t is the noise, scaled
        assert torch.equal(same_t[0], same_t[1]) == shared and torch.equal(same_t[1], same_t[2]) == shared


def test_a_perfect_denoiser_of_point_classes_names_the_right_one_with_zero_error():
    """Classes that are single points mu_c: the exact noise predictor is (x_t - sqrt(abar) mu_c) /
    sqrt(1 - abar), so the true class's error is 0 at every (t, eps) and every other one's is not."""
    abar = noise_scheduler().alphas_cumprod
    mu = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(2))

    def eps_fn(x_t, t, idx):
        a = abar[t].view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * mu[idx]) / (1 - a).sqrt()

    for true in range(4):
        out = run_to_end(classify.adaptive(eps_fn, mu[true], 4, [(8, 2), (16, 1)], abar))
        assert out["predicted"] == true and out["errors"][true] < 1e-10
        assert min(e for c, e in enumerate(out["errors"]) if c != true) > 1e-3


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_every_prediction_type_is_scored_in_noise_space(prediction_type):
    sched = make_scheduler("ddpm", dict(noise_scheduler(prediction_type).config), prediction_type)
    x0, eps = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    t = torch.tensor([10, 500, 990])
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    exact = {"epsilon": eps, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0, "sample": x0}[prediction_type]
    torch.testing.assert_close(predicted_eps(sched, exact, x_t, t, prediction_type), eps, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("n_samples,to_keep,message", [
    ("10 5", "3 1", "must increase"),
    ("10 50", "1 1", "must decrease to 1"),
    ("10 50", "3", "one 'candidates kept' per round"),
    ("ten", "1", "whole numbers"),
    ("10 2000", "3 1", "at most 1000"),
    ("10 50", "12 1", "keeps 12 of only 10"),
])
def test_a_bad_schedule_gets_a_clear_message(n_samples, to_keep, message):
    with pytest.raises(ParamError, match=message):
        classify.schedule(classify.Params(n_samples=n_samples, to_keep=to_keep), 10, T)


@pytest.mark.parametrize("text,message", [
    ("a red circle", "at least two"),
    ("a red circle | ", "a candidate is empty"),
    (" | ".join(f"a shape {i}" for i in range(51)), "limit is 50"),
    ("a red circle | a red circle", "the same"),
])
def test_bad_candidates_get_a_clear_message(text, message):
    with pytest.raises(ParamError, match=message):
        classify.custom_candidates(text)


# ---- the method through the manager -----------------------------------------------------------

FAST = {"n_samples": "2 4", "to_keep": "2 1"}


class TestClassifyContract(MethodContract):
    method_id = "classify"
    bad = [({"n_samples": "4 2"}, "must increase"), ({"source": "shapes scene"}, "digits model"),
           ({"model": "nope"}, "unknown model"), ({"source": "drawing"}, "draw a digit")]

    @pytest.fixture
    def manager(self, tiny_manager):
        return tiny_manager

    def params(self):
        return classify.Params(test_index=5, **FAST)

    def output(self, result):
        return [result.errors, result.predicted, result.evals]


@pytest.fixture
def shapes_manager(tiny_manager):
    """``tiny_manager`` whose tiny text model says it draws the shapes world."""
    from studio.core.models import DiffusionModel
    from tests.conftest import tiny_shapes_unet

    sched = dict(noise_scheduler().config)
    tiny_manager.register("shapes-t2i", lambda: DiffusionModel("shapes-t2i", tiny_shapes_unet(), sched, "epsilon", "text",
                                                               {"domain": "shapes"}),
                          replace=True, info={"kind": "diffusion", "conditioning": "text", "domain": "shapes"})
    return tiny_manager


def test_a_shapes_question_asks_one_attribute_and_knows_the_answer(shapes_manager):
    p = classify.Params(model="shapes-t2i", source="shapes scene", scene_seed=4, question="colour", **FAST)
    *progress, r = classify.run(p, shapes_manager)
    assert progress[-1].step == progress[-1].total == r.evals == 6 * 2 + 2 * 2
    obj = shapes.random_scene(np.random.default_rng(4), n_objects=1).objects[0]
    assert r.candidates[r.truth] == shapes.concept_caption(obj.shape, obj.colour, obj.region)
    masked = {" ".join("?" if w in shapes.COLOURS else w for w in c.split()) for c in r.candidates}
    assert masked == {shapes.concept_caption(obj.shape, "?", obj.region)}  # only the colour differs
    assert len(r.candidates) == len(shapes.COLOURS)
    csv = r.csv().decode()
    assert '# question: "colour"' in csv and csv.count("\n") == len(r.parameters) + 1 + r.evals


def test_a_digits_drawing_and_an_upload_to_a_text_model_are_read(tiny_manager, shapes_manager):
    canvas = np.full((64, 64, 3), 255, np.uint8)
    canvas[10:54, 28:36] = 0  # a dark "1" on white
    *_, r = classify.run(classify.Params(source="drawing", **FAST), tiny_manager, drawing=canvas)
    assert r.truth is None and r.image.shape == (1, 16, 16) and any("inverted" in n for n in r.notes)
    photo = np.zeros((40, 60, 3), np.uint8)
    p = classify.Params(model="shapes-t2i", source="image", question="custom", candidates="a red circle | a blue square",
                        **FAST)
    *_, r = classify.run(p, shapes_manager, drawing=photo)
    assert r.image.shape == (3, 32, 32) and r.candidates == ["a red circle", "a blue square"]
    assert any("centre-cropped" in n for n in r.notes)
    with pytest.raises(ParamError, match="pick 'custom'"):
        list(classify.run(classify.Params(model="shapes-t2i", source="image", **FAST), shapes_manager, drawing=photo))


@pytest.mark.parametrize("tiny_sd_folder", ["epsilon", "v_prediction"], indirect=True)
def test_a_stable_diffusion_folder_classifies_in_its_latent_space(tiny_sd_folder):
    from studio.core.manager import ModelManager

    m = ModelManager(device="cpu")
    m.add_source(str(tiny_sd_folder), key="tiny-sd")
    p = classify.Params(model="tiny-sd", source="image", question="custom", candidates="a castle | a boat | a cat",
                        n_samples="2 4", to_keep="2 1", seed=3)
    *_, r = classify.run(p, m, drawing=np.full((70, 50, 3), 128, np.uint8))
    assert r.image.shape == (3, 16, 16) and r.evals == 3 * 2 + 2 * 2 and np.isfinite(r.errors).all()
    with m.use("tiny-sd") as dm:
        assert dm.encode(r.image[None]).shape == (1, *dm.sample_shape)


def test_the_tabs_default_schedule_is_the_one_the_benchmark_chose():
    """``bench_classify.py`` chose the default on training digits (never the reported test digits)."""
    import json
    from pathlib import Path

    result = json.loads((Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "classify.json").read_text())
    chosen = result["selection"]["rows"][result["selection"]["chosen"]]
    p = classify.Params()
    plan = classify.schedule(p, 10, T)
    assert chosen["evals_per_image"] == classify.planned_evals(plan, 10, classify.timestep_grid(T, plan[-1][0]), 1)
    assert result["selection"]["chosen"] == ", ".join(f"{n}/{k}" for n, k in plan)


# ----------------------------------------------------------------------------- binding and timestep weights

@pytest.mark.parametrize("seed", range(6))
def test_binding_candidates_name_only_what_the_scene_holds(seed):
    scene = classify.binding_scene(seed)
    a, b = scene.objects
    assert a.shape != b.shape and a.colour != b.colour and not shapes.holds_pair(scene.kinds)
    words = {a.shape, b.shape, a.colour, b.colour, *shapes.REGIONS[a.region].split()}
    for task in classify.BINDING:
        true, foil = classify.binding_candidates(a, b, task)
        assert true != foil
        for cand in (true, foil):  # every attribute a candidate names is in the scene: only binding separates them
            named = shapes.parse_concept(cand)
            assert {named["shape"], named["colour"]} - {None} <= words
            assert named["region"] in (None, a.region)
        truth = shapes.parse_concept(true)
        assert truth["shape"] == a.shape and truth["colour"] in (None, a.colour)


def test_a_binding_question_reads_a_two_object_scene_with_the_truth_not_always_first(shapes_manager):
    truths = []
    for seed in (2, 3):
        p = classify.Params(model="shapes-t2i", source="shapes scene", scene_seed=seed, question="bind colour",
                            n_samples="2 4", to_keep="2 1")
        *_, r = classify.run(p, shapes_manager)
        a, b = classify.binding_scene(seed).objects
        assert r.candidates[r.truth] == f"a {a.colour} {a.shape}" and len(r.candidates) == 2
        assert r.candidates[1 - r.truth] == f"a {b.colour} {a.shape}"
        truths.append(r.truth)
    assert truths == [0, 1]


def test_learned_timestep_weights_find_the_informative_timestep():
    """Only timestep 3 separates the candidates; the others are loud noise that drowns it in the
    uniform mean. Trained on one part, the weights beat uniform weighting on held-out images."""
    rng = np.random.default_rng(0)
    n, T = 200, 8
    errors = rng.normal(1.0, 1.0, size=(n, 2, T))
    errors[:, :, 3] = 1.0 + 0.2 * rng.normal(size=(n, 2)) + np.array([0.0, 0.5])  # the true one (0) is lower at t = 3
    truth = np.zeros(n, dtype=int)
    train, val, test = np.arange(80), np.arange(80, 100), np.arange(100, 200)
    out = classify.learn_timestep_weights(errors, truth, train, val)
    learned = (classify.weighted_choice(errors[test], out["weights"]) == 0).mean()
    uniform = (classify.weighted_choice(errors[test]) == 0).mean()
    assert np.argmax(np.abs(out["weights"])) == 3
    assert learned > 0.9 and learned > uniform + 0.15


def test_the_contrastive_baseline_reads_renders_and_sits_beside_the_verdict(zoo_manager):
    """The shipped clip-shapes picks the right caption of one-object renders (a real threshold) and
    its reading is listed with the diffusion classifier's result."""
    right = 0
    with zoo_manager.use("shapes-t2i") as dm:
        for seed in range(8):
            obj = shapes.random_scene(np.random.default_rng(seed), n_objects=1)
            image = shapes.to_model_range(shapes.render(obj).transpose(2, 0, 1)[None].copy())[0]
            names, truth = classify.question_candidates(obj.objects[0], "caption")
            (row,) = classify.contrastive_reading(zoo_manager, dm, image, names)
            right += row["reads"] == names[truth]
    assert right >= 7
    p = classify.Params(model="shapes-t2i", source="shapes scene", question="shape", n_samples="2 4", to_keep="2 1")
    *_, r = classify.run(p, zoo_manager)
    assert [row["reader"] for row in r.readings] == ["judge-shapes", "clip-shapes"]


def test_adaptive_on_the_rectified_flow_path_compares_velocities():
    """A flow model (the Train tab's): x_t = (1 - s) x0 + s eps and the error is on the velocity eps - x0. An
    oracle whose candidate 0 knows the true x0 has zero error there; candidate 1 believes in another image."""
    from studio.core.sampling import run_to_end
    from studio.methods.classify import adaptive

    x0 = torch.rand(1, 8, 8) * 2 - 1
    other = torch.flip(x0, dims=(-1,))

    def velocity(x_t, t, idx):
        s = (t.float() / 1000).view(-1, 1, 1, 1)
        guess = torch.stack([x0 if int(i) == 0 else other for i in idx])
        return (x_t - guess) / s  # the velocity eps - x0 if guess were x0

    out = run_to_end(adaptive(velocity, x0, 2, [(6, 1)], None, flow=True, T=1000))
    assert out["predicted"] == 0 and out["errors"][0] < 1e-8 < out["errors"][1]
