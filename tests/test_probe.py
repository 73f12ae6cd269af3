"""Diffusion features (DDAE's linear probe): the decoder-block hooks, their determinism, the shipped
``probe-digits`` entry and its loader, and the Classify tab's probe panel."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from studio.core import features, loading
from studio.data import digits
from studio.train.diffusion import noise_scheduler
from tests.conftest import tiny_digits_unet

PROBE_INFO = json.loads((loading.ZOO_DIR / "probe-digits" / "studio.json").read_text())


def abar():
    return noise_scheduler().alphas_cumprod


def test_hooks_give_one_pooled_vector_per_decoder_block_with_its_channels():
    unet = tiny_digits_unet()  # block_out_channels (8, 16): decoder levels of 16 then 8 channels, 2 blocks each
    x = torch.from_numpy(digits.load("test").images[:5])
    f = features.pooled_features(unet, abar(), x, 10, seed=3, null_class=10)
    assert list(f) == ["up0.0", "up0.1", "up1.0", "up1.1"] == list(features.block_channels(unet))
    assert {k: tuple(v.shape) for k, v in f.items()} == {"up0.0": (5, 16), "up0.1": (5, 16), "up1.0": (5, 8),
                                                         "up1.1": (5, 8)}
    # the last decoder block's output is what the UNet's output norm reads: pooled, the two agree
    seen = {}
    h = unet.conv_norm_out.register_forward_pre_hook(lambda m, inp: seen.update(x=inp[0].mean(dim=(2, 3))))
    try:
        eps = features.noises((1, 16, 16), 3, 5)
        unet(features.q_sample(x, 10, abar(), eps), torch.full((5,), 10), class_labels=torch.full((5,), 10))
    finally:
        h.remove()
    torch.testing.assert_close(f["up1.1"], seen["x"])
    assert not unet.up_blocks[0].resnets[0]._forward_hooks  # hooks removed after the pass


def test_features_are_deterministic_given_the_seed_and_per_image():
    unet = tiny_digits_unet()
    x = torch.from_numpy(digits.load("test").images[:4])
    a = features.pooled_features(unet, abar(), x, 200, seed=5, null_class=10)
    b = features.pooled_features(unet, abar(), x, 200, seed=5, null_class=10, batch_size=3)
    c = features.pooled_features(unet, abar(), x, 200, seed=6, null_class=10)
    alone = features.pooled_features(unet, abar(), x[2:3], 200, seed=7, null_class=10)  # image 2 of seed 5
    for k in a:
        torch.testing.assert_close(a[k], b[k])
        torch.testing.assert_close(alone[k][0], a[k][2])
        assert not torch.allclose(a[k], c[k])
    with pytest.raises(ValueError, match="no decoder block up9.0"):
        features.pooled_features(unet, abar(), x, 0, names=["up9.0"])


def test_the_shipped_probe_reads_test_digits(zoo_manager):
    test = digits.load("test")
    with zoo_manager.use("probe-digits") as probe:
        assert isinstance(probe, features.LinearProbe) and not any(p.requires_grad for p in probe.parameters())
        assert (probe.block, probe.t) == (PROBE_INFO["block"], PROBE_INFO["t"])
        x = torch.from_numpy(test.images[:10])
        logits = probe(x)
        again = probe(x)
    right = int((logits.argmax(-1).numpy() == test.labels[:10]).sum())
    assert right >= 8, right
    torch.testing.assert_close(again, logits)  # the same noise seeds: the same reading


def test_the_probe_kind_loads_from_a_folder_and_refuses_a_bad_head(tmp_path):
    for name in ("digits-cond", "probe-digits"):
        shutil.copytree(loading.ZOO_DIR / name, tmp_path / name)
    probe = loading.load_folder(tmp_path / "probe-digits")  # no MANIFEST: the LOADERS table by kind
    assert isinstance(probe, features.LinearProbe) and probe.info["kind"] == "probe"
    assert loading.LOADERS["probe"] is loading._load_probe
    info = {**PROBE_INFO, "block": "up2.0" if PROBE_INFO["block"] != "up2.0" else "up0.0"}  # other channel count
    (tmp_path / "probe-digits" / "studio.json").write_text(json.dumps(info))
    with pytest.raises(loading.WeightsError, match="channels"):
        loading.load_folder(tmp_path / "probe-digits")
    (tmp_path / "probe-digits" / "studio.json").write_text(json.dumps({**PROBE_INFO, "base": "nowhere"}))
    with pytest.raises(loading.WeightsError, match="not beside it"):
        loading.load_folder(tmp_path / "probe-digits")


def test_the_classify_tab_shows_the_probe_grid_for_digits_only(tiny_manager, zoo_manager):
    import gradio as gr

    from components.classify_tab import build_classify_tab, probe_panel
    from studio.methods import classify

    tiny_manager.register("probe-digits", lambda: None, info=PROBE_INFO)
    fig, note = probe_panel(tiny_manager, "digits-cond")
    heat = fig.data[0]
    assert heat.type == "heatmap" and list(heat.y) == PROBE_INFO["grid"]["blocks"]
    assert list(heat.x) == [str(t) for t in PROBE_INFO["grid"]["timesteps"]]
    assert "validation" in fig.layout.title.text and f"block {PROBE_INFO['block']}, t = {PROBE_INFO['t']}" in note
    fig, note = probe_panel(tiny_manager, "shapes-t2i")
    assert fig is None and "for digits models" in note
    with gr.Blocks() as demo:
        tab = build_classify_tab(tiny_manager)
    assert "validation" in tab["probe_info"].value
    assert tab["probe_chart"].value is None  # drawn when the panel opens: the page is built without plotly figures
    opens = [d for d in demo.fns.values() if any(t[0] == tab["probe_box"]._id and t[1] == "expand" for t in d.targets)]
    assert len(opens) == 1 and tab["probe_chart"]._id in [o._id for o in opens[0].outputs]
    fig, _ = opens[0].fn("digits-cond")
    assert fig.data[0].type == "heatmap"
    assert all(row["where"] == "not loaded" for row in tiny_manager.status())  # the panel loads nothing

    # the probe is one more reader of the classified digit (real zoo models)
    image = torch.from_numpy(digits.load("test").images[0])
    with zoo_manager.use("digits-cond") as dm:
        rows = classify.readings(zoo_manager, dm, image)
    row = next(r for r in rows if r["reader"] == "probe-digits")
    assert row["who"] == f"a linear probe on digits-cond's own features (block {PROBE_INFO['block']}, t={PROBE_INFO['t']})"
    assert row["reads"] == str(digits.load("test").labels[0])
    _, note = probe_panel(zoo_manager, "digits-cond", rows)
    assert f"reads this image as **{row['reads']}**" in note
