"""Metrics: bootstrap intervals, the Frechet distance formula, FD-digits sanity on real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from studio.core import metrics
from studio.data import digits


def test_bootstrap_interval_contains_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small, large = metrics.bootstrap_mean(rng.random(50) < 0.7), metrics.bootstrap_mean(rng.random(5000) < 0.7)
    for e in (small, large):
        assert e.low <= e.value <= e.high
    assert large.high - large.low < small.high - small.low
    assert abs(large.value - 0.7) < 0.03
    with pytest.raises(ValueError):
        metrics.bootstrap_mean([])


def test_an_unpaired_difference_covers_zero_only_when_the_means_agree():
    rng = np.random.default_rng(1)
    same = metrics.bootstrap_difference(rng.random(300) < 0.6, rng.random(200) < 0.6)
    apart = metrics.bootstrap_difference(rng.random(300) < 0.9, rng.random(200) < 0.5)
    assert same.low < 0 < same.high
    assert 0.3 < apart.low <= apart.value <= apart.high < 0.5 and apart.n == 200
    with pytest.raises(ValueError):
        metrics.bootstrap_difference([], [1.0])


def test_frechet_distance_closed_form_for_gaussians():
    """Two Gaussians with diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2."""
    mu1, mu2 = np.array([0.0, 1.0]), np.array([2.0, -1.0])
    s1, s2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    expected = 8.0 + (1 - 3) ** 2 + (2 - 1) ** 2
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected)


def test_fd_digits_of_the_training_set_is_near_zero_and_large_for_shuffled_pixels(zoo_manager):
    train = torch.from_numpy(digits.load("train").images)
    perm = torch.from_numpy(np.random.default_rng(0).permutation(16 * 16))
    shuffled = train.flatten(1)[:, perm].view_as(train)
    with zoo_manager.use("fd-digits") as net:
        same = metrics.frechet(net, train, train, n_boot=20)
        half = metrics.frechet(net, train[::2], train[1::2], n_boot=20)
        bad = metrics.frechet(net, train, shuffled, n_boot=20)
    assert abs(same.value) < 1e-6
    assert bad.value > 20 * max(half.value, 1e-3)  # two halves of real data are close; scrambled is far
    assert bad.low <= bad.value <= bad.high


def test_the_digits_judge_meets_its_bar_on_the_test_split(zoo_manager):
    test = digits.load("test")
    with zoo_manager.use("judge-digits") as judge:
        acc = metrics.digits_accuracy(judge, torch.from_numpy(test.images), test.labels)
    assert acc.value >= 0.97, acc


def test_linear_predictive_score_of_a_clean_sine_is_near_zero():
    t = np.arange(400)
    v = 5 + np.sin(2 * np.pi * t / 12)
    windows = np.stack([v[i:i + 24] for i in range(300)])
    scale = np.abs(windows[:, :18]).mean(1, keepdims=True)
    assert metrics.linear_predictive_score(windows / scale, windows[250:], 18, alpha=1e-6) < 1e-3
    noise = np.random.default_rng(0).normal(size=(300, 24))
    assert metrics.linear_predictive_score(noise, windows[250:], 18) > 0.1


def test_the_paired_fd_difference_is_zero_for_the_same_set_and_sees_a_shift():
    from studio.core.metrics import frechet_features, frechet_paired_difference

    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 4))
    a = rng.normal(size=(300, 4)) * 1.3  # a generator with the wrong spread
    same = frechet_paired_difference(real, a, a.copy())
    assert same.value == 0 and same.low == pytest.approx(0, abs=1e-12) and same.high == pytest.approx(0, abs=1e-12)
    b = a + 0.4  # the same seeds, each sample moved
    diff = frechet_paired_difference(real, a, b)
    assert diff.low > 0 and diff.value == pytest.approx(
        frechet_features(b, real, n_boot=2).value - frechet_features(a, real, n_boot=2).value)
    with pytest.raises(ValueError, match="one row per seed"):
        frechet_paired_difference(real, a, b[:-1])
