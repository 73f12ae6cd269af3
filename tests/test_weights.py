"""Weights (D2NWG, p-diff): the task grid, the flat classifier, the generators' parts against their
definitions, memorisation and fine-tuning, and the method's contract on tiny random generators."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from studio.core import weightgen as G
from studio.core.models import WeightGenerator
from studio.core.params import ParamError
from studio.data import digit_tasks as D
from studio.methods import weights
from studio.nets import weightgen as W
from studio.train import weightgen as T
from tests.contract import MethodContract


def test_the_task_grid_keeps_selection_and_held_out_tasks_apart_from_the_seen_ones():
    assert len(D.ALL) == 52 and len(set(t.id for t in D.ALL)) == 52
    assert not set(D.SELECTION) & set(D.HELD_OUT)
    assert not (set(D.SELECTION) | set(D.HELD_OUT)) & set(D.SEEN)
    assert len(D.SEEN) == 44 and D.split_of(D.HELD_OUT[0]) == "held-out"
    with pytest.raises(ValueError, match="unknown digits task"):
        D.task("rot7-plain-clean")


def test_a_task_is_deterministic_and_a_quarter_turn_is_exact():
    a, b = D.data("rot90-plain-clean"), D.data("rot0-plain-clean")
    np.testing.assert_array_equal(a.images, np.rot90(b.images, 1, axes=(2, 3)))
    noisy = D.transform(b.images[:4], D.task("rot0-plain-noisy"), 5)
    np.testing.assert_array_equal(noisy, D.transform(b.images[:4], D.task("rot0-plain-noisy"), 5))
    assert noisy.min() >= -1 and noisy.max() <= 1 and not np.array_equal(noisy, b.images[:4])
    subset = D.data("rot0-plain-clean-0to4", "test")
    assert set(subset.labels.tolist()) == {0, 1, 2, 3, 4}
    s = D.support("rot45-thick-clean", 5, seed=1)
    assert np.bincount(s.labels).tolist() == [5] * 10


def test_the_flat_vector_is_the_module_and_k_vectors_run_at_once():
    theta = W.init_vector(torch.Generator().manual_seed(0))
    assert theta.shape == (W.N_PARAMS,) == (1954,)
    net = W.TinyCNN()
    net.load_state_dict(W.unflatten(theta))
    x = torch.randn(7, 1, 16, 16)
    torch.testing.assert_close(net(x), W.logits(theta, x))
    torch.testing.assert_close(W.flatten(net.state_dict()), theta)
    thetas = torch.stack([theta, W.init_vector(torch.Generator().manual_seed(1))])
    torch.testing.assert_close(W.batched_logits(thetas, x)[1], W.logits(thetas[1], x))
    # the same bounds as PyTorch's own initialisation of the layers
    fan_in = {"conv1": 9, "conv2": 72, "fc": 128}
    for (name, _), part, ref in zip(W.LAYOUT, theta.split(W.SIZES), W.TinyCNN().state_dict().values()):
        bound = fan_in[name.split(".")[0]] ** -0.5
        assert part.abs().max() <= bound and ref.abs().max() <= bound and part.abs().max() > bound / 2, name


def test_the_autoencoder_without_noise_is_decode_of_encode_and_its_latent_is_clamped():
    ae = W.ParamAutoencoder(in_dim=100, dec_channels=(4, 8, 8, 4), input_noise=0.0, latent_noise=0.0).eval()
    x = torch.randn(3, 100)
    torch.testing.assert_close(ae(x), ae.decode(ae.encode(x)))
    assert ae.encode(x).shape == (3, *ae.latent_shape) and ae.encode(x).abs().max() <= 1
    noisy = W.ParamAutoencoder(in_dim=100, dec_channels=(4, 8, 8, 4), latent_noise=0.5).eval()
    noisy.load_state_dict(ae.state_dict())
    assert not torch.allclose(noisy(x, torch.Generator().manual_seed(0)), ae(x))


def test_a_few_shot_set_marks_absent_classes_and_repeats_scarce_ones():
    feats = torch.arange(12.0)[:, None].expand(12, 3)
    labels = [0] * 10 + [3, 3]
    sets, present = G.few_shot_set(feats, labels, 5, torch.Generator().manual_seed(0))
    assert present.tolist() == [True, False, False, True] + [False] * 6
    assert sets.shape == (10, 5, 3) and set(sets[3, :, 0].tolist()) <= {10.0, 11.0}
    assert len(set(sets[0, :, 0].tolist())) == 5 and (sets[1] == 0).all()


def test_the_dataset_encoder_ignores_order_within_a_class_and_absent_classes():
    enc = W.DatasetEncoder(d_in=6, d_hidden=8, d_out=4, heads=2).eval()
    s = torch.randn(1, 10, 5, 6)
    present = torch.tensor([[True] * 6 + [False] * 4])
    out = enc(s, present)
    torch.testing.assert_close(enc(s[:, :, torch.randperm(5)], present), out, atol=1e-5, rtol=1e-5)
    changed = s.clone()
    changed[:, 7:] = 100
    torch.testing.assert_close(enc(changed, present), out, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(enc(s), out)


def test_the_contrastive_loss_prefers_matched_pairs():
    a = torch.nn.functional.normalize(torch.randn(8, 16), dim=1) * 3
    assert T.soft_clip_loss(a, a) < T.soft_clip_loss(a, a[torch.randperm(8)])


def test_memorisation_finds_a_copied_checkpoint():
    ck = torch.stack([W.init_vector(torch.Generator().manual_seed(i)) for i in range(4)])
    x = torch.randn(50, 1, 16, 16)
    out = G.memorisation(torch.stack([ck[2], ck[2] + 5.0]), ck, x, ["a", "a", "b", "b"])
    assert out.index[0] == 2 and out.distance[0] == 0 and out.agreement[0] == 1.0
    assert out.distance[1] > 100 and out.spread > 0


def test_fine_tuning_learns_and_each_start_is_its_own_run():
    d = D.data("rot0-plain-clean")
    x, y = d.images[:300], d.labels[:300]
    starts = torch.stack([W.init_vector(torch.Generator().manual_seed(i)) for i in range(2)])
    curve = list(G.finetune(starts, x, y, 60, lr=0.1, eval_x=x, eval_y=y, record=(60,)))
    assert [c[0] for c in curve] == [0, 60]
    assert (curve[-1][1] > curve[0][1] + 0.3).all()
    alone = list(G.finetune(starts[1:], x, y, 60, lr=0.1, record=(60,)))[-1][2]
    torch.testing.assert_close(alone[0], curve[-1][2][1], atol=1e-5, rtol=1e-4)
    assert weights.Params().lr == G.FINETUNE_LR == 0.01  # the benchmark's choice on the selection tasks


def test_own_examples_are_checked():
    x = torch.zeros(4, 1, 16, 16)
    assert weights.check_examples(x, [0, 1, 0, 1])[1].tolist() == [0, 1, 0, 1]
    for images, labels, message in [(x, [0, 0, 0, 0], "two classes"), (torch.zeros(4, 1, 8, 8), [0, 1, 0, 1], "16 x 16"),
                                    (x * float("nan"), [0, 1, 0, 1], "finite"), (x, [0, 1, 0, 12], "0 to 9"),
                                    (x, [0, 1], "labels"), (None, None, "give some")]:
        with pytest.raises(ParamError, match=message):
            weights.check_examples(images, labels)


# ----------------------------------------------------------------------------- tiny generators
CHECKPOINT_TASKS = [t.id for t in D.ALL for _ in range(2)]


def tiny_d2nwg() -> WeightGenerator:
    torch.manual_seed(0)
    ck = torch.randn(len(CHECKPOINT_TASKS), W.N_PARAMS) * 0.1
    nets = {"vae": W.WeightVAE(side=8, channels=(8, 8), scale=0.1), "encoder": W.DatasetEncoder(16, 8, 8, 2),
            "unet": W.ConditionalLatentUNet(size=4, d_cond=8, cond_channels=2, channels=(8, 16))}
    info = {"kind": "weightgen", "method": "d2nwg", "tasks": [t.id for t in D.SEEN],
            "checkpoint_tasks": CHECKPOINT_TASKS}
    return WeightGenerator("d2nwg-digits", "d2nwg", {k: v.eval() for k, v in nets.items()}, dict(T.D2NWG_SCHEDULER),
                           {"checkpoints": ck, "accuracy": torch.zeros(len(ck)), "base": ck[0]}, info)


def tiny_pdiff() -> WeightGenerator:
    torch.manual_seed(1)
    task = "rot0-plain-clean"
    ae = W.ParamAutoencoder(in_dim=1290, dec_channels=(4, 8, 8, 4), scale=0.1)
    nets = {f"{task}/ae": ae.eval(), f"{task}/denoiser": W.LatentDenoiser(*ae.latent_shape, width=16).eval()}
    info = {"kind": "weightgen", "method": "pdiff", "tasks": [task]}
    return WeightGenerator("pdiff-digits", "pdiff", nets, dict(T.PDIFF_SCHEDULER),
                           {f"{task}/checkpoints": torch.randn(6, W.N_PARAMS) * 0.1}, info)


class TinySSL(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.conv = torch.nn.Conv2d(1, 16, 4, stride=4)

    def pooled(self, x):
        return self.conv(x).mean((2, 3))


@pytest.fixture
def weights_manager(tiny_manager):
    tiny_manager.register("d2nwg-digits", tiny_d2nwg, info={"kind": "weightgen"})
    tiny_manager.register("pdiff-digits", tiny_pdiff, info={"kind": "weightgen"})
    tiny_manager.register("simclr-digits", lambda: TinySSL().eval(), info={"kind": "encoder"})
    return tiny_manager


class TestWeightsContract(MethodContract):
    method_id = "weights"
    bad = [({"k": 0}, "Models to generate"), ({"model": "nope"}, "unknown generator"),
           ({"model": "pdiff-digits", "task": "rot45-thick-clean"}, "one model per task"),
           ({"task": weights.OWN}, "give some labelled examples")]

    @pytest.fixture
    def manager(self, weights_manager):
        return weights_manager

    def params(self):
        return weights.Params(k=4, steps=3, finetune_steps=3)

    def output(self, result):
        return [result.thetas, result.accuracy, result.curve]


def test_pdiff_samples_only_its_own_tasks_and_keeps_the_frozen_layers(weights_manager):
    from studio.core.sampling import run_to_end

    p = weights.Params(model="pdiff-digits", task="rot0-plain-clean", k=3, steps=3, finetune_steps=2)
    result = run_to_end(weights.run(p, weights_manager))
    frozen = tiny_pdiff().tensors["rot0-plain-clean/checkpoints"][0]
    assert torch.equal(result.thetas[:, : W.HEAD.start], frozen[: W.HEAD.start].expand(3, -1))
    assert [c["step"] for c in result.curve] == [0, 1, 2]
    assert all(r["its_task"] == "rot0-plain-clean" for r in result.memorisation)


def test_own_examples_run_and_a_model_downloads_as_safetensors(weights_manager):
    from safetensors.torch import load

    from studio.core.sampling import run_to_end

    d = D.data("rot0-plain-clean")
    p = weights.Params(task=weights.OWN, k=3, steps=2, finetune_steps=0)
    result = run_to_end(weights.run(p, weights_manager, images=torch.from_numpy(d.images[:20]), labels=d.labels[:20]))
    assert result.evaluated_on.startswith("your 20 examples") and result.curve == [] and len(result.zoo_accuracy) == 0
    blob = weights.model_file(result, 1)
    net = W.TinyCNN()
    net.load_state_dict(load(blob))
    x = torch.from_numpy(d.images[:20])
    assert (net(x).argmax(1) == G.predictions(result.thetas[1:2], x)[0]).all()
    from safetensors import safe_open
    import json
    import tempfile
    with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
        f.write(blob)
        f.flush()
        with safe_open(f.name, "pt") as st:
            assert json.loads(st.metadata()["parameters"])["task"] == weights.OWN
    with pytest.raises(ParamError, match="model index"):
        weights.model_file(result, 3)
    with pytest.raises(ParamError, match="only with the task"):
        run_to_end(weights.run(dataclasses.replace(p, task="rot0-plain-clean"), weights_manager,
                               images=torch.from_numpy(d.images[:20]), labels=d.labels[:20]))
