"""The self-supervised digits encoder REPA aligns to (``simclr-digits``): it loads frozen from the zoo
with a 4 x 4 grid of tokens, the NT-Xent loss rewards matching views, the shipped encoder maps two
views of one digit nearer than two digits, and the recipe trains and resumes."""

from __future__ import annotations

import json
import math

import pytest
import torch

from studio.core.loading import load_zoo, read_manifest
from studio.data import digits
from studio.nets.ssl import DigitsSSLEncoder, nt_xent
from studio.train import simclr


@pytest.fixture(scope="module")
def encoder():
    return simclr.load_encoder()


def test_the_shipped_encoder_loads_frozen_with_a_grid_of_tokens(encoder):
    assert isinstance(load_zoo("simclr-digits"), DigitsSSLEncoder)
    assert isinstance(encoder, DigitsSSLEncoder) and not encoder.training
    assert not any(p.requires_grad for p in encoder.parameters())
    assert encoder.dim == 64 and encoder.grid == 4
    x = torch.from_numpy(digits.load("test").images[:5])
    tokens = encoder.tokens(x)
    assert tokens.shape == (5, 16, 64) and tokens.dtype == torch.float32
    assert torch.allclose(tokens.mean(-1), torch.zeros(5, 16), atol=1e-5)  # layer-normed, no affine
    assert torch.allclose(encoder.pooled(x), tokens.mean(1), atol=1e-6) and torch.equal(encoder(x), encoder.pooled(x))
    # row-major: the top-left token reads the top-left corner, so blanking the bottom rows leaves it nearly as it was
    y = x.clone()
    y[..., 8:, :] = -1.0
    moved = (encoder.tokens(y) - tokens).norm(dim=-1).mean(0)
    assert moved[:4].mean() < moved[12:].mean()
    entry = read_manifest()["simclr-digits"]
    assert entry["kind"] == "encoder" and entry["bytes"] < 1.5 * 2**20


def test_nt_xent_rewards_matched_views():
    # two orthogonal unit pairs at temperature 1: each view's partner has similarity 1, the two others 0
    e = torch.eye(2)
    assert math.isclose(float(nt_xent(e, e, temperature=1.0)), -math.log(math.e / (math.e + 2)), rel_tol=1e-6)
    gen = torch.Generator().manual_seed(0)
    z1 = torch.randn(32, 16, generator=gen)
    z2 = z1 + 0.3 * torch.randn(32, 16, generator=gen)
    matched, shuffled = nt_xent(z1, z2), nt_xent(z1, z2.roll(1, 0))
    assert matched < 1.0 < math.log(63) - 0.5 < shuffled


def _view_similarity(net: DigitsSSLEncoder, x: torch.Tensor) -> tuple[float, float]:
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        a = torch.nn.functional.normalize(net.pooled(simclr.augment(x, gen)), dim=-1)
        b = torch.nn.functional.normalize(net.pooled(simclr.augment(x, gen)), dim=-1)
    cos = a @ b.T
    same = cos.diagonal().mean()
    other = (cos.sum() - cos.diagonal().sum()) / (len(x) * (len(x) - 1))
    return float(same), float(other)


def test_two_views_of_one_digit_are_nearer_than_two_digits(encoder):
    """On unseen (test) digits, and by a wider gap than the same network at its random initialisation."""
    x = torch.from_numpy(digits.load("test").images[:128])
    same, other = _view_similarity(encoder, x)
    torch.manual_seed(0)
    same0, other0 = _view_similarity(DigitsSSLEncoder(**simclr.CONFIG).eval(), x)
    assert same - other > 0.3, (same, other)
    assert same - other > 2 * (same0 - other0), (same, other, same0, other0)


def test_the_recipe_trains_and_resumes(tmp_path):
    out = simclr.train(steps=2, batch=16, export=False, root=tmp_path)
    assert out["step"] == 2 and math.isfinite(out["loss"]) and out["processes"] == 1
    first = DigitsSSLEncoder(**simclr.CONFIG)
    simclr.Checkpoint(simclr.NAME, tmp_path).load({"model": first})
    out = simclr.train(steps=3, batch=16, export=False, root=tmp_path)
    assert out["step"] == 3
    lines = [json.loads(s) for s in (tmp_path / simclr.NAME / simclr.LOSS_FILE).read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in lines)
    after = DigitsSSLEncoder(**simclr.CONFIG)
    simclr.Checkpoint(simclr.NAME, tmp_path).load({"model": after})
    assert not torch.equal(first.body[0][0].weight, after.body[0][0].weight)  # the resumed step trained
