"""The Swap method's pieces (x0-space guidance, the cell mask, the layout term, the blend) against hand
computations, and the method contract, on tiny random models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from studio.core import guidance as G
from studio.core.sampling import predicted_x0, run_to_end
from studio.data import shapes
from studio.methods import swap
from tests.contract import MethodContract


def test_x0_guidance_moves_the_predicted_clean_image_by_the_shift_for_every_prediction_type():
    from studio.train.diffusion import noise_scheduler

    sched = noise_scheduler("v_prediction", zero_snr=True, clip_sample=False)
    abar = sched.alphas_cumprod
    x, t = torch.randn(2, 3, 4, 4), torch.tensor(600)
    raw = torch.randn(2, 3, 4, 4)
    delta = torch.randn(2, 3, 4, 4)
    for kind in ("epsilon", "v_prediction", "sample"):
        same = G.x0_guidance(lambda x_, t_: raw, abar, kind, lambda x0, t_: torch.zeros_like(x0))(x, t)
        torch.testing.assert_close(same, raw, atol=1e-5, rtol=1e-5)
        moved = G.x0_guidance(lambda x_, t_: raw, abar, kind, lambda x0, t_: delta)(x, t)
        torch.testing.assert_close(predicted_x0(sched, moved, x, t, kind),
                                   predicted_x0(sched, raw, x, t, kind) + delta, atol=1e-4, rtol=1e-4)
    first = G.x0_guidance(lambda x_, t_: raw, abar, "v_prediction", lambda x0, t_: delta)(x, torch.tensor(999))
    assert torch.isfinite(first).all()  # zero terminal SNR: abar = 0, no division by it
    with pytest.raises(ValueError, match="x0 guidance"):
        G.x0_guidance(lambda x_, t_: raw, abar, "flow", lambda x0, t_: delta)


def test_the_nine_cells_tile_the_image_and_the_layout_finds_an_object():
    total = sum(swap.cell_mask(r) for r in range(9))
    assert torch.equal(total, torch.ones_like(total))
    scene = shapes.Scene((shapes.ShapeObject("circle", "red", 4, 15.5, 16.5, 3.0),))
    x = shapes.render_tensor(scene)
    centroid, area = swap.layout(x, swap.cell_mask(4))
    assert centroid[0].tolist() == pytest.approx([15.5, 16.5], abs=0.25)  # (PIL draws ellipses a fraction of a pixel off)
    assert float(area) == pytest.approx(math.pi * 3.0 ** 2, rel=0.2)  # (anti-aliased edge pixels count nearly whole)
    assert float(swap.where_loss(x, swap.cell_mask(4), centroid, area)) == pytest.approx(0.0, abs=1e-6)
    moved = torch.roll(x, 2, dims=-1)
    assert float(swap.where_loss(moved, swap.cell_mask(4), centroid, area)) == pytest.approx(4.0, rel=0.05)


def test_the_weights_follow_the_time_schedule():
    assert swap.weights_at(1000, 3.0, 2.0) == (0.0, 2.0)  # pure noise: where only
    assert swap.weights_at(0, 3.0, 2.0) == (3.0, 0.0)     # the end: what only
    assert swap.weights_at(500, 3.0, 2.0) == (1.5, 1.0)


def test_a_task_names_its_object_and_refuses_what_cannot_be_swapped():
    task = swap.task_of(swap.Params(scene_seed=1, object=1, new_shape="square", new_colour="keep"))
    o = task.scene.objects[0]
    assert task.caption == shapes.concept_caption("square", o.colour, o.region)
    assert task.captions()[0] == task.caption and task.captions()[1:] == [x.caption() for x in task.scene.objects[1:]]
    from studio.core.params import ParamError

    with pytest.raises(ParamError, match="choose an object from 1"):
        swap.task_of(swap.Params(scene_seed=1, object=3))
    with pytest.raises(ParamError, match="already is"):
        swap.task_of(swap.Params(scene_seed=1, object=1, new_shape=o.shape, new_colour=o.colour))


def tiny_clip():
    from studio.nets.contrastive import ShapesCLIP

    torch.manual_seed(0)
    return ShapesCLIP(width=4, hidden=16, embed_dim=8).eval().requires_grad_(False)


def tiny_judge():
    from studio.nets.judges import ShapesGridNet

    torch.manual_seed(1)
    return ShapesGridNet(width=4, feature_dim=16).eval().requires_grad_(False)


def with_tiny_swap(manager):
    manager.register("clip-shapes", tiny_clip, info={"kind": "contrastive"})
    manager.register("judge-shapes", tiny_judge, info={"kind": "judge"})
    return manager


@pytest.fixture
def swap_manager(tiny_manager):
    return with_tiny_swap(tiny_manager)


class TestSwapContract(MethodContract):
    method_id = "swap"
    bad = [({"model": "nope"}, "unknown shapes model"), ({"steps": 0}, "Steps"), ({"object": 3}, "choose an object"),
           ({"new_shape": "keep", "new_colour": "keep"}, "already is"), ({"what": -1.0}, "What weight")]

    @pytest.fixture
    def manager(self, swap_manager):
        return swap_manager

    def params(self):
        return swap.Params(steps=2, compare="ablations")

    def output(self, result):
        return [result.images, result.rows]


def test_blended_variants_keep_the_original_outside_the_cell_and_the_others_may_not(swap_manager):
    r = run_to_end(swap.run(swap.Params(steps=3, compare="baselines", seed=2), swap_manager))
    assert list(r.images) == ["original", "ldfacenet", "inpaint", "sdedit", "compose"]
    outside = 1 - swap.cell_mask(r.task.region)
    for name in ("ldfacenet", "inpaint"):
        assert torch.equal(r.images[name] * outside, r.images["original"] * outside)
    assert not torch.equal(r.images["compose"] * outside, r.images["original"] * outside)
    rows = {row["variant"]: row for row in r.rows}
    assert rows["original"]["other_cells_kept"] == 1.0 and rows["original"]["psnr_outside"] > 100  # identical: capped
    assert rows["inpaint"]["psnr_outside"] > 100 and rows["compose"]["psnr_outside"] < 100
    assert r.parameters["asked"] == r.task.caption and "becomes" in r.notes[0]
