"""Edit (SIGN): drawings to digits, corruptions, SDEdit, the two panes' contracts, training and export."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from studio.core import metrics
from studio.core.manager import ModelManager
from studio.core.params import ParamError
from studio.core.sampling import Progress
from studio.errors import UserError
from studio.data import digits
from studio.data.drawings import DrawingError, to_digit, to_mask
from studio.methods import edit
from studio.nets.idempotent import IdempotentNet
from tests.contract import MethodContract


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _drawn(digit_index: int = 0, scale: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """A test digit drawn dark on a transparent canvas, as the Sketchpad returns it, and the digit."""
    clean = digits.load("test").images[digit_index, 0]
    ink = np.kron((clean + 1) / 2, np.ones((scale, scale)))
    canvas = np.zeros((*ink.shape, 4), np.uint8)
    canvas[..., 3] = (ink * 255).astype(np.uint8)  # black strokes, alpha = ink
    return canvas, clean


def test_a_dark_on_transparent_drawing_becomes_a_light_on_dark_digit_with_notes():
    canvas, clean = _drawn(3)
    arr, notes = to_digit(canvas)
    assert arr.shape == (1, 16, 16) and arr.dtype == np.float32 and arr.min() >= -1 and arr.max() <= 1
    assert any("inverted" in n for n in notes) and any("resized from 320 x 320" in n for n in notes)
    # same digit after crop / recentre / resize: strongly correlated with the original
    assert np.corrcoef(arr.ravel(), clean.ravel())[0, 1] > 0.6
    # an RGB JPEG-like upload of the same, light background, gives the same digit
    rgb = Image.fromarray(255 - canvas[..., 3]).convert("RGB")
    arr2, notes2 = to_digit(_png(rgb))
    np.testing.assert_allclose(arr2, arr, atol=0.05)
    assert any("greyscale" in n for n in notes2)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((200, 200, 4), np.uint8), "blank"),
    (np.full((50, 50), 255, np.uint8), "blank"),
    (b"timestamp,value\n2020-01-01,3\n", "not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "not an image"),
    (b"0" * (6 * 1024 * 1024), "larger than"),
])
def test_bad_drawings_get_a_clear_message(bad, message):
    with pytest.raises(DrawingError, match=message):
        to_digit(bad)


def test_a_huge_image_is_refused_before_decoding():
    header = Image.new("L", (5000, 5000))
    with pytest.raises(DrawingError, match="4096"):
        to_digit(_png(header))


def test_a_painted_mask_marks_what_was_painted():
    canvas = np.zeros((160, 160, 4), np.uint8)
    canvas[:80, :, 0] = 255
    canvas[:80, :, 3] = 255  # top half painted red
    m = to_mask(canvas)
    assert m.shape == (16, 16) and m[:7].all() and not m[9:].any()
    assert to_mask(np.zeros((160, 160, 4), np.uint8)) is None


def test_corruptions_are_seeded_and_do_what_they_say():
    x = torch.from_numpy(digits.load("test").images[:64])
    noisy = edit.corrupt(x, "noise", 0.5, torch.Generator().manual_seed(1))
    assert abs(float((noisy - x).std()) - 0.5) < 0.02
    torch.testing.assert_close(noisy, edit.corrupt(x, "noise", 0.5, torch.Generator().manual_seed(1)))
    boxed = edit.corrupt(x, "box", 0.25, torch.Generator().manual_seed(2))
    hidden = (boxed != x) | (boxed == edit.MASK_FILL)
    share = edit.random_boxes(64, (16, 16), 0.25, torch.Generator().manual_seed(2)).float().mean()
    assert 0.2 < float(share) < 0.3 and hidden.any()
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[:4] = True
    masked = edit.corrupt(x, "mask", 0.0, torch.Generator(), mask)
    assert (masked[:, :, :4] == 0).all() and torch.equal(masked[:, :, 4:], x[:, :, 4:])
    torch.testing.assert_close(edit.corrupt(x, "none", 1.0, torch.Generator()), x)
    with pytest.raises(ParamError, match="paint"):
        edit.corrupt(x, "mask", 0.0, torch.Generator(), None)


def test_psnr_and_idempotence_error_by_hand():
    a = torch.zeros(1, 1, 4, 4)
    assert float(metrics.psnr(a + 0.2, a)) == pytest.approx(10 * np.log10(4 / 0.04), rel=1e-5)
    identity = torch.nn.Identity()
    x = torch.randn(3, 1, 16, 16)
    assert torch.all(edit.idempotence_error(identity, x) == 0)
    doubling = lambda v: 2 * v  # noqa: E731
    torch.testing.assert_close(edit.idempotence_error(doubling, x), torch.ones(3))  # ||4x - 2x|| / ||2x||


def test_paired_difference_resamples_items_together_and_says_no_difference_when_it_covers_zero():
    rng = np.random.default_rng(0)
    shared = rng.random(300) < 0.5  # what both editors get right on the same inputs
    a = shared.astype(float)
    b = a.copy()
    b[:6] = 1 - b[:6]  # b differs on 6 of 300 items only
    d = edit.paired_difference(a, b)
    assert d.value == pytest.approx((a - b).mean()) and d.n == 300 and d.low <= d.value <= d.high
    # pairing: the per-item differences are 0 except 6, so the interval is far narrower than unpaired resampling's
    unpaired = edit.paired_difference(a, rng.permutation(b))
    assert (d.high - d.low) < 0.5 * (unpaired.high - unpaired.low)
    assert edit.verdict(edit.paired_difference(a, a)) == "no difference"  # identical: the interval is {0}
    better = edit.paired_difference(np.ones(200), np.r_[np.ones(150), np.zeros(50)])
    assert better.low > 0 and edit.verdict(better, "A better", "B better") == "A better"
    assert edit.verdict(edit.paired_difference(np.zeros(50), np.ones(50))) == "worse"
    small = edit.paired_difference(np.r_[1.0, np.zeros(99)], np.zeros(100))  # one hit in 100: covers 0
    assert small.low == 0.0 and edit.verdict(small) == "no difference"
    with pytest.raises(ValueError):
        edit.paired_difference([1, 0], [1, 0, 1])


class _Counting(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet, self.calls = unet, []

    def __call__(self, x, t, **kw):
        self.calls.append(int(t))
        return self.unet(x, t, **kw)


def test_sdedit_spends_exactly_the_asked_evaluations_from_the_asked_level(tiny_manager):
    with tiny_manager.use("digits-cond") as dm:
        counting = _Counting(dm.unet)
        dm.unet = counting
        x_c = torch.zeros(2, 1, 16, 16)
        for evals, strength in ((1, 0.5), (4, 0.5), (4, 1.0), (3, 0.3)):
            counting.calls.clear()
            out = edit.sdedit(dm, x_c, evals, strength, torch.Generator().manual_seed(0))
            assert out.shape == x_c.shape and len(counting.calls) == evals
            assert abs(counting.calls[0] - strength * 1000) <= 1000 / evals + 1  # starts near strength * T
        dm.unet = counting.unet


def result_of(p: edit.Params, manager, **inputs) -> edit.EditResult:
    """Run ``edit.run`` to its end; checks that a Progress per application of f comes first."""
    *progress, result = edit.run(p, manager, **inputs)
    assert [item.step for item in progress] == list(range(1, p.k + 1))
    assert all(isinstance(item, Progress) for item in progress)
    return result


def test_generate_pane_rows_are_z_then_each_application_and_reproducible(sign_manager):
    p = edit.Params(k=3, n_images=2, seed=5)
    r = result_of(p, sign_manager)
    assert len(r.images) == 2 and r.tensors.shape == (2, 4, 1, 16, 16) and r.seeds == [5, 6]
    assert r.images[0].size == (4 * 96 + 3 * 2, 96) and r.captions[1].startswith("seed 6: z, f(z), f(f(z)) ... f^3(z)")
    with sign_manager.use("sign-digits") as f:
        z = edit.noises(5, 2, (1, 16, 16))
        torch.testing.assert_close(r.tensors[:, 0], z)
        torch.testing.assert_close(r.tensors[:, 1], f(z))
        torch.testing.assert_close(r.tensors[:, 3], f(f(f(z))), rtol=1e-4, atol=1e-4)
    again = result_of(edit.Params(k=1, n_images=1, seed=6), sign_manager)  # row 2 alone
    torch.testing.assert_close(again.tensors[0, 1], r.tensors[1, 1])
    assert r.parameters["method"] == "edit/generate" and r.parameters["seed"] == 5 and "ms per image" in r.notes[0]
    with pytest.raises(ParamError, match="unknown generator"):
        result_of(edit.Params(model="digits-cond"), sign_manager)
    with pytest.raises(ParamError, match="Applications"):
        result_of(edit.Params(k=0), sign_manager)


def test_generate_without_any_generator_says_how_to_build_one():
    with pytest.raises(ParamError, match="studio train sign-digits"):
        result_of(edit.Params(), ModelManager(device="cpu"))


def test_edit_pane_shows_input_corrupted_each_projection_and_sdedit(sign_manager):
    p = edit.Params(mode="project", test_index=7, corruption="noise", strength=0.5, k=2, seed=3)
    r = result_of(p, sign_manager)
    assert [row["image"] for row in r.table][1:] == ["corrupted", "f(x_c)", "f^2(x_c)", "SDEdit, 2 evals"]
    assert r.table[0]["image"] == f"test digit {digits.load('test').labels[7]}"
    assert all("PSNR to input (dB)" in row for row in r.table[1:])
    assert r.parameters["true_class"] == int(digits.load("test").labels[7])
    again = result_of(p, sign_manager)
    torch.testing.assert_close(again.tensors, r.tensors)  # the seed fixes the corruption and SDEdit's noise
    canvas, _ = _drawn(0)
    drawn = result_of(edit.Params(mode="project", source="drawing", corruption="none", k=1, compare_sdedit=False),
                          sign_manager, drawing=canvas)
    assert len(drawn.images) == 3 and any("inverted" in n for n in drawn.notes) and "test_index" not in drawn.parameters


@pytest.mark.parametrize("kwargs, drawing, mask, message", [
    ({"source": "drawing"}, None, None, "draw a digit"),
    ({"source": "drawing"}, np.zeros((64, 64, 4), np.uint8), None, "blank"),
    ({"source": "drawing"}, b"not an image", None, "not an image"),
    ({"corruption": "mask"}, None, None, "mask is blank"),
    ({"corruption": "mask"}, None, np.zeros((64, 64, 4), np.uint8), "mask is blank"),
    ({"corruption": "box", "strength": 1.5}, None, None, "at most 90%"),
    ({"test_index": 360}, None, None, "Test digit"),
    ({"strength": float("nan")}, None, None, "finite"),
])
def test_bad_edit_inputs_get_clear_messages(sign_manager, kwargs, drawing, mask, message):
    with pytest.raises(UserError, match=message):
        result_of(edit.Params(mode="project", **kwargs), sign_manager, drawing=drawing, mask=mask)


def test_training_loop_runs_both_phases_and_the_export_loads_back(tmp_path, monkeypatch):
    from studio.core import loading
    from studio.train import sign

    before = {k: v.clone() for k, v in sign.build_fake_score().state_dict().items()}
    monkeypatch.setattr(sign, "BATCH", 4)
    pairs = sign.teacher_pairs  # the teacher's pairs in chunks of 4, not the recipe's 512 (two minutes of DDIM)
    monkeypatch.setattr(sign, "teacher_pairs", lambda n, **kw: pairs(n, chunk=4, **kw))
    result = sign.train("sign-digits", seed=0, warmup=1, joint=1, root=tmp_path, n_pairs=4, progress=False,
                        export=False, checkpoint_every=1)
    assert result["steps"] == 2 and (tmp_path / "sign-digits-seed0-1-1" / "fake.safetensors").exists()
    from safetensors.torch import load_file

    fake = load_file(tmp_path / "sign-digits-seed0-1-1" / "fake.safetensors")
    assert any(not torch.equal(fake[k], before[k]) for k in before)  # trained in the joint phase
    f = sign.load_run("sign-digits", seed=0, warmup=1, joint=1, root=tmp_path)
    zoo = tmp_path / "zoo"
    sign.export_f("sign-digits", f, {**result, "history": [{"step": 2, "reg": 0.1}]}, zoo=zoo)
    loaded = loading.load_folder(zoo / "sign-digits")
    assert isinstance(loaded, IdempotentNet) and loaded.info["method"] == "sign"
    z = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(loaded(z), f(z), atol=2e-2, rtol=1e-2)  # fp16 on disk


class TestEditContract(MethodContract):
    method_id = "edit"
    bad = [({"k": 0}, "Applications"), ({"model": "digits-cond"}, "unknown generator"),
           ({"mode": "project", "corruption": "box", "strength": 1.5}, "at most 90%")]

    @pytest.fixture
    def manager(self, sign_manager):
        return sign_manager

    def params(self):
        return edit.Params(mode="project", k=2, seed=3)
