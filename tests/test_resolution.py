"""DDMI's pieces (studio.nets.inr, studio.train.ddmi), the render metrics and the Resolution method,
on tiny random models, against hand computations and the properties the method relies on."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from studio.core import loading, metrics
from studio.core.models import INRDiffusionModel, model_kind
from studio.core.sampling import Progress, run_to_end
from studio.data import shapes
from studio.methods import resolution
from studio.nets.inr import D2CVAE, ModulatedLinear, fourier_features, pixel_grid
from studio.train import ddmi
from tests.conftest import tiny_shapes_unet
from tests.contract import MethodContract


def tiny_vae(seed: int = 0, **kw) -> D2CVAE:
    torch.manual_seed(seed)
    return D2CVAE(latent_channels=4, encoder_channels=(8, 8, 8), decoder_channels=(8, 8, 8), plane_channels=8,
                  mlp_width=16, **kw).eval().requires_grad_(False)


def tiny_inr() -> INRDiffusionModel:
    unet = tiny_shapes_unet(sample_size=8, channels=4).requires_grad_(False)  # a latent UNet: 8 x 8 x 4
    return INRDiffusionModel("ddmi-shapes", unet, dict(ddmi.ldm_scheduler().config), "epsilon", "text", {"kind": "inr"},
                             vae=tiny_vae())


def test_pixel_centres_follow_the_official_convention_and_a_crop_is_a_slice_of_the_larger_grid():
    g = pixel_grid(4)
    assert g.shape == (4, 4, 2)
    torch.testing.assert_close(g[0, :, 0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))  # x along a row: +-(R-1)/R
    torch.testing.assert_close(g[:, 0, 1], torch.tensor([-0.75, -0.25, 0.25, 0.75]))  # y down the column
    torch.testing.assert_close(pixel_grid(64, (5, 9), 32), pixel_grid(64)[9:41, 5:37])


def test_the_modulated_layer_is_stylegan2_weight_modulation_and_demodulation():
    torch.manual_seed(0)
    layer = ModulatedLinear(5, 3, style_dim=4)
    with torch.no_grad():
        layer.bias.normal_()
    x, style = torch.randn(2, 5, 7), torch.randn(2, 4)
    s = layer.affine(style)
    w = layer.gain * layer.weight[None] * s[:, None, :]  # a weight per sample, as the official fused form
    w = w / (w.pow(2).sum(2, keepdim=True) + 1e-8).sqrt()
    expected = F.leaky_relu(torch.einsum("boi,bin->bon", w, x) + layer.bias[None, :, None], 0.2) * math.sqrt(2)
    torch.testing.assert_close(layer(x, style), expected, atol=1e-5, rtol=1e-5)


def test_a_render_is_one_function_of_the_coordinates_at_every_size():
    vae = tiny_vae()
    z = torch.randn(2, 4, 8, 8)
    for size in (16, 32, 64, 128):
        assert vae.render(z, size).shape == (2, 3, size, size)
    big = vae.render(z, 64)
    crop = vae.query(z, pixel_grid(64, (8, 16), 32), vae.scale_injection(64, 2))  # what a training crop reads
    torch.testing.assert_close(crop, big[..., 16:48, 8:40], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vae.render(z, 64), big)  # no noise injection: the same image every time
    assert vae.scale_injection(64, 2).tolist() == [0.5, 0.5]
    flat = tiny_vae(scale_injection=False)
    assert flat.scale_injection(128, 3).tolist() == [1.0, 1.0, 1.0]


def test_the_ablations_change_only_the_positional_embedding():
    z = torch.randn(1, 4, 8, 8)
    fine = tiny_vae(pe="fine")
    assert set(fine.decoder.heads) == {"2"} and len({id(p) for p in fine.basis(z)}) == 1  # one plane, thrice
    fourier = tiny_vae(pe="fourier")
    assert not hasattr(fourier, "decoder") and fourier.render(z, 48).shape == (1, 3, 48, 48)
    c = torch.tensor([[[0.25, -0.5]]])
    f = fourier_features(c, 2)
    expected = [math.sin(math.pi * 0.25), math.sin(2 * math.pi * 0.25), math.sin(-math.pi * 0.5), math.sin(-2 * math.pi * 0.5),
                math.cos(math.pi * 0.25), math.cos(2 * math.pi * 0.25), math.cos(-math.pi * 0.5), math.cos(-2 * math.pi * 0.5)]
    # layout: (coordinate, [sin k..., cos k...]) flattened: x's sin/cos block, then y's
    got = f[0, :, 0].tolist()
    assert sorted(round(v, 5) for v in got) == sorted(round(v, 5) for v in expected)
    with pytest.raises(ValueError, match="pe must be one of"):
        D2CVAE(pe="hash")


def test_multiscale_targets_are_crops_of_true_renders_with_their_coordinates():
    batch = ddmi.multiscale_batch(np.random.default_rng(3), 12)
    assert batch["images"].shape == batch["targets"].shape == (12, 3, 32, 32) and batch["coords"].shape == (12, 32, 32, 2)
    assert {round(float(v), 4) for v in batch["si"]} <= {1.0, round(32 / 48, 4), 0.5}
    full = batch["si"] == 1
    assert torch.equal(batch["images"][full], batch["targets"][full])
    for i in torch.nonzero(~full).flatten().tolist():  # a crop's coordinates lie inside (-1, 1), spanning 32 / s of it
        c = batch["coords"][i]
        span = float(c[0, -1, 0] - c[0, 0, 0])
        assert span == pytest.approx(2 * 31 / (32 / float(batch["si"][i])), rel=1e-4)
    assert ddmi.kl_weight(0, 100) == pytest.approx(1e-4) and ddmi.kl_weight(90, 100) == pytest.approx(ddmi.KL_END)
    assert ddmi.kl_weight(100, 100) == pytest.approx(ddmi.KL_END) and ddmi.kl_weight(45, 100) < ddmi.KL_END


def test_the_stage1_loss_sums_over_pixels_and_the_edge_term_is_zero_for_a_perfect_render():
    vae = tiny_vae()
    batch = ddmi.multiscale_batch(np.random.default_rng(0), 4)
    terms = ddmi.vae_loss(vae, batch, beta=0.5)
    torch.testing.assert_close(terms["loss"], terms["l1"] + ddmi.EDGE_WEIGHT * terms["edge"] + 0.5 * terms["kl"])
    x = batch["targets"]
    assert float(ddmi.edge_l1(x, x)) == 0.0
    assert float(ddmi.edge_l1(x + 0.1, x)) == pytest.approx(0.0, abs=1e-4)  # a constant shift has the same edges
    assert float(ddmi.edge_l1(x.flip(-1), x)) > 0


def test_a_rescaled_scene_renders_the_same_picture_at_another_size():
    scene = shapes.random_scene(np.random.default_rng(5))
    small = shapes.render_tensor(scene)
    big = resolution.true_render(scene, 128)
    assert big.shape == (1, 3, 128, 128)
    assert float((F.interpolate(big, size=(32, 32), mode="area") - small).abs().mean()) < 0.03
    assert shapes.rescale(scene, 32) == scene


def test_render_metrics_by_hand():
    scene = shapes.random_scene(np.random.default_rng(1), n_objects=2)
    truth = resolution.true_render(scene, 64)
    assert metrics.colour_mask_iou(truth, truth).item() == 1.0
    assert metrics.colour_mask_iou(-torch.ones_like(truth), truth).item() == 0.0  # black: no object pixel
    assert metrics.edge_sharpness(truth, truth).item() == pytest.approx(1.0)
    blurred = resolution.bicubic(F.interpolate(truth, size=(16, 16), mode="area"), 64)
    assert metrics.edge_sharpness(blurred, truth).item() < 0.8
    assert metrics.psnr(blurred, truth).item() < 40
    labels = metrics.palette_labels(shapes.to_model_range(np.array(shapes.RGB["blue"], dtype=np.uint8)[None, :, None, None]))
    assert labels.item() == 1 + shapes.COLOURS.index("blue")


def test_a_saved_inr_entry_loads_back_through_the_loader_table(tmp_path):
    dm = tiny_inr()
    dm.vae.save_pretrained(tmp_path / "vae", safe_serialization=True)
    dm.unet.save_pretrained(tmp_path / "model", safe_serialization=True)
    ddmi.ldm_scheduler().save_pretrained(tmp_path / "scheduler")
    info = {"kind": "inr", "conditioning": "text", "model_class": "UNet2DConditionModel", "vae_class": "D2CVAE"}
    (tmp_path / "studio.json").write_text(json.dumps(info))
    loaded = loading.load_folder(tmp_path)
    assert isinstance(loaded, INRDiffusionModel) and model_kind(info) == "inr"
    z = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(loaded.render(z, 48), dm.render(z, 48))
    assert loaded.image_shape == (3, 32, 32) and loaded.sample_shape == (4, 8, 8)


def with_tiny_inr(manager):
    """``manager`` with a tiny random DDMI registered as ``ddmi-shapes``."""
    manager.register("ddmi-shapes", tiny_inr, info={"kind": "inr", "conditioning": "text"})
    return manager


@pytest.fixture
def inr_manager(tiny_manager):
    return with_tiny_inr(tiny_manager)


class TestResolutionContract(MethodContract):
    method_id = "resolution"
    bad = [({"model": "nope"}, "unknown DDMI model"), ({"source": "generate", "prompt": " "}, "prompt is empty"),
           ({"steps": 0}, "Steps"), ({"max_size": 100}, "Largest render"), ({"zoom": "middle"}, "Zoom")]

    @pytest.fixture
    def manager(self, inr_manager):
        return inr_manager

    def params(self):
        return resolution.Params(source="generate", steps=2, max_size=64)

    def output(self, result):
        return result.renders


def test_a_known_scene_is_measured_against_its_true_render_at_every_size(inr_manager):
    items = list(resolution.run(resolution.Params(source="scene", seed=3, max_size=128, zoom="object"), inr_manager))
    assert isinstance(items[0], Progress)
    r = items[-1]
    assert r.sizes == [32, 64, 128] and r.rows == ["DDMI", "bicubic of its 32 px render",
                                                   "bicubic of the true 32 px render", "true render"]
    assert len(r.images) == len(r.captions) == 4 * 3 and all(im.size == (resolution.TILE,) * 2 for im in r.images)
    truth = r.renders["true render"]
    for row in r.table:
        if row["render"] == "true render":
            assert "psnr" not in row
            continue
        x = r.renders[row["render"]][row["size"]]
        assert row["psnr"] == pytest.approx(float(metrics.psnr(x, truth[row["size"]])), abs=1e-3)
    bic = next(row for row in r.table if row["render"] == "bicubic of the true 32 px render" and row["size"] == 32)
    assert bic["psnr"] > 90 and bic["colour_iou"] == 1.0  # bicubic to its own size is the identity
    torch.testing.assert_close(r.renders["bicubic of its 32 px render"][64], resolution.bicubic(r.renders["DDMI"][32], 64))
    assert "prompt" not in r.parameters and r.parameters["sizes"] == [32, 64, 128]
    from studio.core.results import read_png_parameters

    assert read_png_parameters(r.png("DDMI", 128))["size"] == 128


def test_zoom_crops_one_cell_of_every_size():
    x = torch.zeros(1, 3, 96, 96)
    x[..., 64:, 32:64] = 1  # the bottom cell
    assert torch.all(resolution.crop_region(x, 7) == 1) and resolution.crop_region(x, 7).shape[-1] == 32
    scene = shapes.random_scene(np.random.default_rng(2))
    assert resolution.zoom_box("object", scene, "") == scene.objects[0].region
    assert resolution.zoom_box("object", None, "a red circle at the bottom right") == 8
    assert resolution.zoom_box("off", scene, "") is None and resolution.zoom_box("top", None, "") == 1
