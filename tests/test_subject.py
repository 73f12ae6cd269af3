"""VAR's pieces (studio.nets.var, studio.core.var), ARBooth's tuning (studio.train.arbooth) and the Subject
method, on tiny random models, against hand computations and the official loop's invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from studio.core import var as V
from studio.core.models import VARModel
from studio.core.sampling import run_to_end
from studio.data import shapes, subjects
from studio.nets.var import MultiScaleVQ, NextScaleTransformer, init_weights, scale_slices
from studio.train import arbooth as A
from tests.conftest import shared_text_encoder
from tests.contract import MethodContract

SCALES = (1, 2, 4, 8)


def tiny_var(seed: int = 0) -> VARModel:
    torch.manual_seed(seed)
    vq = MultiScaleVQ(channels=(8, 16), latent_channels=4, codebook_size=16, scales=SCALES).eval()
    net = NextScaleTransformer(codebook_size=16, latent_channels=4, scales=SCALES, dim=16, depth=1, heads=2)
    init_weights(net)
    return VARModel("var-shapes", vq.requires_grad_(False), net.eval().requires_grad_(False),
                    {"kind": "var", "scales": list(SCALES)})


def text(prompts: list[str]) -> dict:
    from studio.data.text import encode

    return encode(shared_text_encoder(), prompts)


def test_one_scale_is_plain_nearest_neighbour_vq_and_the_residuals_add_up():
    torch.manual_seed(0)
    vq = MultiScaleVQ(channels=(8, 16), latent_channels=4, codebook_size=16, scales=(8,), phi_mix=0.0)
    f = torch.randn(2, 4, 8, 8)
    f_hat, (idx,), loss = vq.quantize(f)
    d = ((f.permute(0, 2, 3, 1)[..., None, :] - vq.codebook.weight) ** 2).sum(-1)
    assert torch.equal(idx, d.argmin(-1))
    e = vq.codebook(idx).permute(0, 3, 1, 2)
    torch.testing.assert_close(f_hat, e)  # phi with m = 0 is the identity; the straight-through value is e
    torch.testing.assert_close(loss, 1.25 * ((e - f) ** 2).mean())  # beta 0.25 + 1
    vq6 = tiny_var().tokenizer
    f = torch.randn(3, 4, 8, 8)
    f_hat, indices, _ = vq6.quantize(f)
    assert [tuple(i.shape[1:]) for i in indices] == [(p, p) for p in SCALES]
    torch.testing.assert_close(vq6.f_hat(indices), f_hat)  # the token maps rebuild the quantised latent
    inputs = vq6.teacher_inputs(indices)
    assert inputs.shape == (3, vq6.tokens - 1, 4)


def test_the_kv_cached_sampler_sees_what_teacher_forcing_sees_and_the_mask_is_block_causal():
    vm = tiny_var()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    indices = vm.tokenizer.tokenize(x)
    cond = text(["a red square", "a blue circle at the top"])
    full = V.teacher_logits(vm.tokenizer, vm.transformer, indices, cond)
    inputs, caches, steps = vm.tokenizer.teacher_inputs(indices), [{} for _ in vm.transformer.blocks], []
    for k, sl in enumerate(scale_slices(SCALES)):
        x_in = None if k == 0 else inputs[:, sl.start - 1:sl.stop - 1]
        steps.append(vm.transformer.step(k, x_in, cond["encoder_hidden_states"], cond["encoder_attention_mask"],
                                         cond["pooled"], caches))
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)
    changed = [i.clone() for i in indices]
    changed[2][:, 0, 0] = (changed[2][:, 0, 0] + 1) % 16  # a token of scale 2 (4 x 4)
    again = V.teacher_logits(vm.tokenizer, vm.transformer, changed, cond)
    upto = scale_slices(SCALES)[2].stop
    torch.testing.assert_close(again[:, :upto], full[:, :upto])  # scales <= 2 never see scale 2's tokens
    assert not torch.allclose(again[:, upto:], full[:, upto:])   # scale 3 does


def test_top_k_and_top_p_keep_what_the_official_filter_keeps():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]]))
    assert torch.isinf(V.filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    assert torch.isinf(V.filter_logits(logits, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(V.filter_logits(logits, top_p=0.8)).tolist() == [[False, False, False, True]]
    assert not torch.isinf(V.filter_logits(logits)).any()
    assert torch.isinf(V.filter_logits(logits, top_p=0.01)).tolist() == [[False, True, True, True]]


def test_sampling_is_seeded_per_image_and_guidance_ramps_from_zero_at_the_coarsest_scale():
    vm = tiny_var()
    cond, uncond = V.take(text(["a red square", ""]), [0, 0]), V.take(text([""]), [0, 0])
    a = run_to_end(V.sample_tokens(vm, cond, uncond, [5, 6], cfg=3.0))
    b = run_to_end(V.sample_tokens(vm, V.take(cond, [0]), V.take(uncond, [0]), [6], cfg=3.0))
    assert all(torch.equal(x[1:], y) for x, y in zip(a, b))  # image 2 with seed 6 alone draws the same
    # at the coarsest scale t = 0: guided and unguided draw the same first token from the same seed
    guided = run_to_end(V.sample_tokens(vm, cond, uncond, [5, 6], cfg=9.0))
    plain = run_to_end(V.sample_tokens(vm, cond, None, [5, 6]))
    assert torch.equal(guided[0], plain[0])
    items = list(V.sample(vm, cond, uncond, [1, 2]))
    assert [p.info["scale"] for p in items[:-1]] == list(SCALES) and items[-1].shape == (2, 3, 32, 32)


def test_scale_weights_distillation_and_the_weighted_loss_follow_the_formulas():
    w = V.scale_weights((1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 24, 32))  # a 13-scale schedule: 8 coarse
    assert w[:1 + 4 + 9 + 16 + 25 + 36 + 64 + 100].eq(1).all() and w[1 + 4 + 9 + 16 + 25 + 36 + 64 + 100:].eq(0.5).all()
    assert V.scale_weights(SCALES).tolist() == [1.0] * (1 + 4) + [0.5] * (16 + 64)  # round(8 / 13 * 4) = 2 coarse
    logits = torch.randn(2, 85, 16)
    torch.testing.assert_close(V.distill_loss(logits, logits), torch.tensor(0.0))
    other = torch.randn(2, 85, 16)
    pt, ls = other.softmax(-1), logits.log_softmax(-1)
    kl = (pt * (pt.log() - ls)).sum(-1).sum(1).mean() / 85
    torch.testing.assert_close(V.distill_loss(logits, other), kl)
    indices = [torch.randint(16, (2, p, p)) for p in SCALES]
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), V.flat_indices(indices).flatten(), reduction="none")
    weights = V.scale_weights(SCALES)
    torch.testing.assert_close(V.token_loss(logits, indices, weights), (ce.view(2, 85) * weights).sum(1).mean() / 85)
    torch.testing.assert_close(V.token_loss(logits, indices), ce.mean())


def test_the_placeholder_block_replaces_the_word_and_carries_the_gradient():
    enc = shared_text_encoder()
    prompt = "a sks square at the top"
    span = V.placeholder_span(enc, prompt)
    assert span is not None and V.placeholder_span(enc, "a red square") is None
    plain = text([prompt])
    block = torch.nn.Parameter(torch.randn(4, 384))
    got = V.with_placeholder(plain, [span], block)
    n = int(plain["encoder_attention_mask"].sum())
    assert int(got["encoder_attention_mask"].sum()) == n - (span[1] - span[0]) + 4
    torch.testing.assert_close(got["encoder_hidden_states"][0, span[0]:span[0] + 4], block.detach())
    torch.testing.assert_close(got["encoder_hidden_states"][0, :span[0]], plain["encoder_hidden_states"][0, :span[0]])
    got["pooled"].sum().backward()
    assert block.grad is not None and block.grad.abs().sum() > 0
    untouched = V.with_placeholder(plain, [None], block)
    torch.testing.assert_close(untouched["pooled"], plain["pooled"])  # the same pooling as text.encode


def test_selective_tuning_changes_only_cross_attention_and_ffn_and_a_saved_subject_rebuilds_it():
    vm = tiny_var()
    before = {k: v.clone() for k, v in vm.transformer.state_dict().items()}
    x = shapes.to_model_range(subjects.images(subjects.get("orange-square")))
    settings = A.TuneSettings(iterations=3, lr=1e-2, seed=1)
    items = list(A.tune(vm, shared_text_encoder(), x, "square", A.VARIANTS["arbooth"], settings))
    *progress, tuned = items
    assert len(progress) == 3 and all(p.info["prior"] is not None for p in progress)
    assert all(torch.equal(v, vm.transformer.state_dict()[k]) for k, v in before.items())  # the lease is untouched
    groups = vm.transformer.layer_groups()
    after = tuned.transformer.state_dict()
    for name in groups["rest"]:
        assert torch.equal(after[name], before[name]), name
    assert any(not torch.equal(after[n], before[n]) for n in groups["cross_attn"])
    assert any(not torch.equal(after[n], before[n]) for n in groups["ffn"])
    assert tuned.placeholder.shape == (A.PLACEHOLDER_TOKENS, 384) and tuned.placeholder.abs().sum() > 0
    assert tuned.info["trainable_params"] == sum(after[n].numel() for n in groups["cross_attn"] + groups["ffn"]) + 4 * 384
    state = V.subject_state(tuned, vm)
    assert set(state) - {"placeholder"} <= {f"transformer.{n}" for n in groups["cross_attn"] + groups["ffn"]}
    rebuilt = V.apply_subject_state(vm, state, {"subject": "orange-square"}, "mine")
    cond = text(["a sks square"])
    idx = vm.tokenizer.tokenize(x[:1])
    torch.testing.assert_close(V.teacher_logits(vm.tokenizer, rebuilt.transformer, idx, cond),
                               V.teacher_logits(vm.tokenizer, tuned.transformer, idx, cond))
    full = run_to_end(A.tune(vm, shared_text_encoder(), x, "square", A.VARIANTS["full"], settings))
    assert full.placeholder is None and any(
        not torch.equal(full.transformer.state_dict()[n], before[n]) for n in groups["rest"])


def test_the_subjects_are_unseen_combinations_at_four_places():
    for s in subjects.SUBJECTS.values():
        x = subjects.images(s)
        assert x.shape == (4, 3, 32, 32) and x.dtype == np.uint8
        regions = [sc.objects[0].region for sc in subjects.scenes(s)]
        assert regions == list(subjects.SUBJECT_REGIONS)
        assert s.fill not in shapes.RGB.values() or s.hollow > 0  # an off-palette hue, or an outline
    assert set(subjects.SELECTION).isdisjoint(subjects.REPORT) and subjects.DEFAULT in subjects.REPORT
    np.testing.assert_array_equal(subjects.images(subjects.get("orange-square")),
                                  subjects.images(subjects.get("orange-square")))


# the Subject tab's method, on tiny random models -----------------------------------------------------

from studio.methods import subject  # noqa: E402


def tiny_judge(seed: int = 0):
    from studio.nets.judges import ShapesGridNet

    torch.manual_seed(seed)
    return ShapesGridNet(width=4, feature_dim=16).eval()


def with_tiny_var(manager):
    manager.register("var-shapes", tiny_var, info={"kind": "var"})
    manager.register("judge-shapes", tiny_judge, info={"kind": "judge"})
    manager.register("fd-shapes", lambda: tiny_judge(1), info={"kind": "judge"})
    return manager


@pytest.fixture
def subject_manager(tiny_manager):
    return with_tiny_var(tiny_manager)


FAST = dict(n_images=2, iterations=2, comparison="arbooth-vs-full")


class TestSubjectContract(MethodContract):
    method_id = "subject"
    bad = [({"prompt": "  "}, "prompt is empty"), ({"n_images": 0}, "Images per model"),
           ({"model": "nope"}, "unknown VAR model"), ({"subject": "upload"}, "upload 2 to 8"),
           ({"lr": 5.0}, "Learning rate")]

    @pytest.fixture
    def manager(self, subject_manager):
        return subject_manager

    def params(self):
        return subject.Params(**FAST)

    def output(self, result):
        return [result.images, result.class_images, [r["subject_fidelity"] for r in result.rows]]


def test_a_run_tunes_each_variant_and_measures_it_beside_the_untuned_model(subject_manager):
    r = run_to_end(subject.run(subject.Params(**FAST, seed=4), subject_manager))
    assert [row["model"] for row in r.rows] == ["base", "arbooth", "full"] and set(r.models) == {"arbooth", "full"}
    base, arbooth, full = r.rows
    assert base["drift_fd"] == 0.0 and base["drift_agreement"]["value"] == 1.0 and base["trainable_params"] == 0
    assert all(0 <= row["class_fidelity"]["value"] <= 1 and 0 <= row["drift_agreement"]["low"] <= 1 for row in r.rows)
    assert arbooth["trainable_params"] < full["trainable_params"]
    assert all(-1 <= row["subject_fidelity"]["value"] <= 1 and 0 <= row["prompt_fidelity"]["value"] <= 1
               for row in r.rows)
    assert r.images["base"].shape == (2, 3, 32, 32) and r.parameters["shape"] == "square"
    assert r.seeds == [4, 5] and r.subject_images.shape == (4, 3, 32, 32)
    stopped = run_to_end(subject.run(subject.Params(**FAST), subject_manager, stop=lambda: True))
    assert list(stopped.models) == ["arbooth"] and stopped.rows[1]["iterations"] == 0  # stop: nothing more is trained


def test_uploads_are_checked_resized_and_used(subject_manager, tmp_path):
    import io

    from PIL import Image

    def png(w, h):
        buf = io.BytesIO()
        Image.new("RGB", (w, h), (255, 120, 0)).save(buf, format="PNG")
        return buf.getvalue()

    arrays, notes = subject.subject_pictures([png(64, 64), png(32, 32)])
    assert arrays.shape == (2, 3, 32, 32) and notes == ["picture 1: 64 x 64 resized to 32 x 32"]
    with pytest.raises(subject.ParamError, match="picture 2 is 64 x 20"):
        subject.subject_pictures([png(32, 32), png(64, 20)])
    with pytest.raises(subject.ParamError, match="picture 1"):
        subject.subject_pictures([b"not an image"])
    p = subject.Params(**FAST, subject="upload", shape="circle")
    r = run_to_end(subject.run(p, subject_manager, images=arrays))
    assert r.parameters["shape"] == "circle" and r.subject_images.shape == (2, 3, 32, 32)
    with pytest.raises(subject.ParamError, match="at most 8"):
        run_to_end(subject.run(p, subject_manager, images=np.concatenate([arrays] * 5)))


def test_class_drift_compares_the_judges_reading_distributions_not_seeds():
    class Reader(torch.nn.Module):  # reads a square in cell 0, coloured by the image's first pixel (0: red, 1: blue)
        def read(self, x):
            s = torch.zeros(len(x), 9, dtype=torch.long)
            c = torch.zeros(len(x), 9, dtype=torch.long)
            s[:, 0] = shapes.SHAPES.index("square") + 1
            c[:, 0] = x[:, 0, 0, 0].long() * shapes.COLOURS.index("blue")
            return s, c

    def images(colours):
        x = torch.zeros(len(colours), 3, 4, 4)
        x[:, 0, 0, 0] = torch.tensor(colours, dtype=torch.float)
        return x

    same_mix = subject.class_drift(Reader(), images([0, 1, 0, 1]), images([1, 0, 1, 0]), "square")
    assert same_mix["agreement"]["value"] == 1.0  # every seed differs, the distribution does not
    half = subject.class_drift(Reader(), images([1, 1, 1, 1]), images([0, 0, 1, 1]), "square")
    assert half["agreement"]["value"] == pytest.approx(0.5)  # TV distance 0.5
    assert half["class_shape"].tolist() == [1.0] * 4
    assert subject.class_drift(Reader(), images([0, 0]), images([0, 0]), "circle")["class_shape"].tolist() == [0.0, 0.0]


def test_the_tabs_variant_labels_name_the_recipes_variants():
    from studio.train.arbooth import VARIANTS

    assert set(subject.VARIANT_LABELS) <= set(VARIANTS) and "arbooth" in subject.VARIANT_LABELS
