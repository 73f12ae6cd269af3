"""Compose (Composable Diffusion): the syntax, the combiner, the NOT operators, the judge's verdicts,
the method's contract on tiny models, and the real Stable Diffusion path on tiny random components."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from studio.core import guidance as G
from studio.core.params import ParamError
from studio.errors import UserError
from studio.core.results import read_png_parameters
from studio.core.sampling import Progress
from studio.methods import compose, generate
from studio.methods.compose import Concept, parse_concepts
from tests.contract import MethodContract
from tests.conftest import tiny_digits_unet


def run(manager, **kw):
    return list(compose.run(compose.Params(**{"steps": 3, "n_images": 2, "preview_every": 0, **kw}), manager))


# --- the official prompt syntax ------------------------------------------------------------------

def test_syntax_of_the_official_pipeline():
    assert parse_concepts("mystical trees | A magical pond | dark", "7.5 | 7.5 | -7.5") == [
        Concept("mystical trees", 7.5), Concept("A magical pond", 7.5), Concept("dark", -7.5)]
    assert parse_concepts("a | b", "", 3.0) == [Concept("a", 3.0), Concept("b", 3.0)]  # no weights: guidance
    assert parse_concepts("a | b | c", "1 | | -2", 3.0)[1].weight == 3.0  # a blank weight: guidance
    assert parse_concepts("a | b | c", "1", 3.0)[2].weight == 3.0  # missing weights: guidance
    assert parse_concepts("one concept", "", 2.0) == [Concept("one concept", 2.0)]  # plain CFG
    assert [c.op for c in parse_concepts("a | b", "2 | -2")] == ["AND", "NOT"]
    concepts = parse_concepts("a red circle | a blue shape", "2 | -1.5")
    assert parse_concepts(*compose.to_syntax(concepts)) == concepts


@pytest.mark.parametrize("prompt,weights,message", [
    ("", "", "no concepts"),
    ("  |  ", "", "no concepts"),
    ("a | | b", "", "concept 2 is empty"),
    (" | ".join("abcdefghi"), "", "9 concepts; the limit is 8"),
    ("a | b", "2 | 2 | 2", "3 weights for 2 concepts"),
    ("a | b", "2 | two", "weight 2 .* is not a number"),
    ("a | b", "2 | 21", "between -20 and 20"),
    ("a | b", "nan | 1", "between -20 and 20"),
    ("a | " + "x" * 201, "", "concept 2 is 201 characters"),
])
def test_bad_concepts_get_a_clear_message(prompt, weights, message):
    with pytest.raises(ParamError, match=message):
        parse_concepts(prompt, weights)


# --- the combiner --------------------------------------------------------------------------------

@torch.no_grad()
def test_batched_and_one_at_a_time_evaluation_agree():
    unet = tiny_digits_unet()
    calls = []

    def fn(x, t, cond):
        calls.append(x.shape[0])
        return unet(x, t, **cond).sample

    lab = lambda v: {"class_labels": torch.full((2,), v, dtype=torch.long)}
    x, t = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor(700)
    args = (fn, lab(10), [lab(1), lab(7), lab(3)], [2.0, 1.5, -1.0])
    batched = G.combine(*args)(x, t)
    assert calls == [8]
    calls.clear()
    sequential = G.combine(*args, batched=False)(x, t)
    assert calls == [2, 2, 2, 2]
    torch.testing.assert_close(batched, sequential, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_compose_not_and_negative_prompt_differ_by_one_unit_of_eps_neg_minus_eps_u():
    unet = tiny_digits_unet()
    fn = lambda x, t, c: unet(x, t, **c).sample
    lab = lambda v: {"class_labels": torch.full((2,), v, dtype=torch.long)}
    x, t = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(2)), torch.tensor(300)
    u, pos, neg, w = lab(10), lab(4), lab(9), 3.0
    compose_not = G.combine(fn, u, [pos, neg], [w, -w])(x, t)  # eps_u + w (eps_pos - eps_neg)
    negative_prompt = G.combine(fn, neg, [pos], [w])(x, t)  # eps_neg + w (eps_pos - eps_neg)
    eps_u, eps_neg = fn(x, t.expand(2), u), fn(x, t.expand(2), neg)
    torch.testing.assert_close(negative_prompt - compose_not, eps_neg - eps_u, atol=1e-5, rtol=1e-4)
    assert (eps_neg - eps_u).abs().max() > 1e-3  # the two operators really differ


# --- the method on tiny models -------------------------------------------------------------------

def test_progress_then_images_with_every_concept_in_the_png(tiny_manager):
    items = run(tiny_manager, prompt="a red circle | a blue square | a green shape", weights="2 | 1.5 | -1",
                seed=5, preview_every=1)
    progress, result = items[:-1], items[-1]
    assert [p.step for p in progress] == [1, 2, 3] and all(isinstance(p, Progress) for p in progress)
    assert progress[-1].preview.shape == (2, 3, 32, 32)
    meta = read_png_parameters(result.png(1))
    assert meta["method"] == "compose" and meta["image_seed"] == 6
    assert meta["concepts"] == [{"text": "a red circle", "weight": 2.0, "op": "AND"},
                                {"text": "a blue square", "weight": 1.5, "op": "AND"},
                                {"text": "a green shape", "weight": -1.0, "op": "NOT"}]
    assert result.verdicts == []  # the tiny model is not a shapes-domain zoo model: nothing judged


def test_one_concept_is_plain_cfg_and_batched_equals_sequential(tiny_manager):
    a = run(tiny_manager, prompt="a red circle at the top", weights="2.5", seed=3, scheduler="ddpm")[-1]
    g = list(generate.run(generate.Params(model="shapes-t2i", prompt="a red circle at the top", guidance=2.5,
                                          seed=3, scheduler="ddpm", steps=3, n_images=2, preview_every=0),
                          tiny_manager))[-1]
    torch.testing.assert_close(a.tensors, g.tensors, atol=1e-5, rtol=1e-5)
    b = run(tiny_manager, prompt="a red circle | a blue square", seed=3)[-1]
    c = run(tiny_manager, prompt="a red circle | a blue square", seed=3, evaluation="sequential")[-1]
    # same arithmetic; batch-size-dependent kernels leave float noise that 3 steps carry
    torch.testing.assert_close(b.tensors, c.tensors, atol=1e-3, rtol=1e-3)


def test_negative_prompt_changes_the_images(tiny_manager):
    a = run(tiny_manager, prompt="a red circle | a blue square", weights="3 | -3", seed=1)[-1]
    b = run(tiny_manager, prompt="a red circle", weights="3", negative_prompt="a blue square", seed=1)[-1]
    assert not torch.allclose(a.tensors, b.tensors, atol=1e-3)
    assert read_png_parameters(b.png(0))["negative_prompt"] == "a blue square"


@pytest.mark.parametrize("kw,message", [
    ({"prompt": ""}, "no concepts"),
    ({"model": "digits-cond"}, "not a text-to-image model"),
    ({"model": "nope"}, "unknown model"),
    ({"steps": 0}, "Steps must be between"),
    ({"evaluation": "parallel"}, "Evaluation must be one of"),
    ({"negative_prompt": "y" * 201}, "limit is 200"),
    ({"prompt": "a | " + " ".join("abcdefghijklmnopqrstuvwxyz")}, "word pieces"),
])
def test_bad_input_changes_nothing(tiny_manager, kw, message):
    with pytest.raises(UserError, match=message):
        run(tiny_manager, **kw)
    assert all(r["in use"] == 0 for r in tiny_manager.status())


# --- the judge's per-concept verdicts ------------------------------------------------------------

def test_judge_verdicts_on_rendered_scenes(zoo_manager):
    from studio.data import shapes

    rng = np.random.default_rng(0)
    scene = shapes.random_scene(rng, n_objects=2)
    a, b = scene.objects
    x = shapes.to_model_range(shapes.render(scene).transpose(2, 0, 1)[None].copy())
    other_colour = next(c for c in shapes.COLOURS if c not in (a.colour, b.colour))
    concepts = [Concept(a.caption(), 2.0), Concept(b.caption(drop="region"), 2.0),
                Concept(f"a {other_colour} shape", -2.0), Concept(a.caption(drop="shape"), -2.0),
                Concept("a cat", 2.0)]
    assert compose.judge_verdicts(zoo_manager, x, concepts) == [[True, True, True, False, None]]


# --- the real Stable Diffusion path (tiny random components, no download) -----------------------

@pytest.fixture
def sd_manager(tiny_sd_folder):
    from studio.core.manager import ModelManager

    m = ModelManager(device="cpu")
    m.add_source(str(tiny_sd_folder), key="tiny-sd")
    return m


def test_stable_diffusion_folder_composes_through_the_manager(sd_manager):
    items = run(sd_manager, model="tiny-sd", prompt="a castle | snowy | fog", weights="3 | 2 | -2",
                preview_every=3)
    result = items[-1]
    assert result.tensors.shape == (2, 3, 16, 16) and torch.isfinite(result.tensors).all()
    assert items[-2].preview.shape == (2, 3, 16, 16)  # previews are decoded by the VAE too
    assert result.verdicts == []


@torch.no_grad()
def test_one_concept_on_stable_diffusion_matches_the_diffusers_pipeline(tiny_sd_folder, sd_manager):
    from diffusers import StableDiffusionPipeline

    ours = run(sd_manager, model="tiny-sd", prompt="a castle", weights="4", seed=11, steps=4, n_images=1,
               scheduler="ddim")[-1]  # the folder's own scheduler, as the pipeline uses it
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_folder, use_safetensors=True)
    ref = pipe("a castle", guidance_scale=4.0, num_inference_steps=4, generator=torch.Generator().manual_seed(11),
               output_type="pt").images
    torch.testing.assert_close((ours.tensors + 1) / 2, ref, atol=1e-4, rtol=1e-4)


def test_generate_drives_the_same_stable_diffusion_folder(sd_manager):
    *_, result = generate.run(generate.Params(model="tiny-sd", prompt="a castle", steps=2, n_images=1,
                                              preview_every=0), sd_manager)
    assert result.tensors.shape == (1, 3, 16, 16) and torch.isfinite(result.tensors).all()


# --- the benchmark's fair text baseline: a fine-tune that sees joined captions -----------------

def test_joined_caption_recipe_never_names_a_held_out_pair_and_is_deterministic():
    """``shapes-t2i-joined`` sees multi-object captions (about 40% of them), each naming objects of
    its own image, and never both kinds of a held-out pair; a batch depends only on its seed."""
    from studio.data import shapes
    from studio.train.diffusion import ShapesJoinedRecipe

    recipe = ShapesJoinedRecipe(steps=1)
    caps, named_pairs = [], 0
    for step in range(20):
        scenes, batch_caps = recipe.scenes_and_captions(np.random.default_rng([0, 0, step]))
        for scene, cap in zip(scenes, batch_caps):
            parts = [shapes.parse_concept(p) for p in cap.split(" and ")] if cap else []
            kinds = [(p["shape"], p["colour"]) for p in parts if p["shape"] and p["colour"]]
            assert not shapes.holds_pair(kinds), cap
            if len(parts) > 1:  # every named object is in the image, where the caption says
                named_pairs += 1
                assert all((p["shape"], p["colour"], p["region"]) in
                           {(o.shape, o.colour, o.region) for o in scene.objects} for p in parts), cap
        caps += batch_caps
    assert 0.3 < named_pairs / len(caps) < 0.5
    again = recipe.scenes_and_captions(np.random.default_rng([0, 0, 19]))
    assert again[1] == caps[-recipe.batch_size:] and again[0] == scenes
    x, cond = recipe.batch(np.random.default_rng(1))
    assert x.shape == (32, 3, 32, 32) and cond["encoder_hidden_states"].shape == (32, 48, 384)
    assert recipe.init_from == "shapes-t2i" and recipe.name != "shapes-t2i"  # the shipped weights are only read


def test_selection_items_are_never_report_items():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import bench_compose as B

    key = lambda item: tuple((c["shape"], c["colour"], c["region"]) for c in item)
    report = {key(i) for i in B.held_out_set(2, 126, B.SEED)}
    selection = B.selection_set()
    assert len(selection) == B.N_SELECT and not report & {key(i) for i in selection}
    more = B.selection_set(B.FEWER_SELECT)  # --fewer-steps: the same 36 first, then more, still none reported
    assert more[:B.N_SELECT] == selection and not report & {key(i) for i in more}
    assert B.choose({1.0: 0.5, 2.0: 0.5, 3.0: 0.1}) == 2.0 and B.choose({1.0: 0.6, 2.0: 0.5}) == 1.0


class TestComposeContract(MethodContract):
    method_id = "compose"
    bad = [({"prompt": ""}, "no concepts"), ({"model": "digits-cond"}, "text-to-image"), ({"steps": 0}, "Steps")]

    @pytest.fixture
    def manager(self, tiny_manager):
        return tiny_manager

    def params(self):
        return compose.Params(steps=2, n_images=2, preview_every=1, seed=3)


def test_the_tabs_default_sampler_is_the_one_the_benchmark_chose():
    """``bench_compose.py --samplers`` chose the Compose tab's default on its selection set; ``--fewer-steps``
    replaces it only where its pick was no worse on the report items (2026-12-03: DDIM 8 was worse in FD)."""
    import json
    from pathlib import Path

    result = json.loads((Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "compose.json").read_text())
    fewer = result["fewer_steps"]
    chosen = fewer["chosen"] if fewer["report_not_worse"] else result["samplers"]["chosen"]
    assert fewer["base"] == result["samplers"]["chosen"]
    assert f"{compose.Params.scheduler} {compose.Params.steps}" == chosen
