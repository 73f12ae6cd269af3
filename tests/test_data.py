"""Embedded data: shapes world determinism and exact labels; the fixed digits split."""

from __future__ import annotations

import numpy as np
import pytest

from studio.data import digits, shapes


def test_shapes_are_deterministic_given_a_seed():
    a, sa = shapes.make_dataset(20, seed=5)
    b, sb = shapes.make_dataset(20, seed=5)
    c, _ = shapes.make_dataset(20, seed=6)
    assert np.array_equal(a, b) and [s.to_dict() for s in sa] == [s.to_dict() for s in sb]
    assert not np.array_equal(a, c)
    assert a.shape == (20, 3, 32, 32) and a.dtype == np.uint8


def test_objects_stay_in_distinct_regions_and_do_not_overlap():
    rng = np.random.default_rng(0)
    for _ in range(300):
        scene = shapes.random_scene(rng)
        assert 1 <= len(scene.objects) <= 3
        regions = [o.region for o in scene.objects]
        assert len(set(regions)) == len(regions)
        for o in scene.objects:
            assert shapes.region_of(o.cx, o.cy) == o.region
            cell = 32 / 3
            row, col = divmod(o.region, 3)
            assert col * cell <= o.cx - o.radius and o.cx + o.radius <= (col + 1) * cell + 1e-9
            assert row * cell <= o.cy - o.radius and o.cy + o.radius <= (row + 1) * cell + 1e-9


def test_rendered_colour_and_position_match_the_labels():
    rng = np.random.default_rng(1)
    for _ in range(50):
        scene = shapes.random_scene(rng, n_objects=1)
        img = shapes.render(scene).astype(float)
        o = scene.objects[0]
        ys, xs = np.nonzero(img.sum(-1) > 150)
        assert shapes.region_of(xs.mean() + 0.5, ys.mean() + 0.5) == o.region
        centre = img[int(o.cy), int(o.cx)]
        assert np.abs(centre - np.array(shapes.RGB[o.colour])).max() < 40


def test_captions_and_labels():
    o = shapes.ShapeObject("circle", "red", 0, 5.0, 5.0, 4.0)
    assert o.caption() == "a red circle at the top left"
    assert o.caption(drop="region") == "a red circle"
    assert o.caption(drop="shape") == "a red shape at the top left"
    assert o.caption(drop="colour") == "a circle at the top left"
    caps = shapes.all_captions()
    assert caps[0] == "" and len(caps) == len(set(caps)) == 1 + 3 * 6 * 9 + 3 * 6 + 3 * 9 + 6 * 9
    scene = shapes.Scene((o,))
    s, c = scene.cell_labels()
    assert s.tolist() == [1] + [0] * 8 and c.tolist() == [0] + [-1] * 8
    with pytest.raises(ValueError):
        shapes.random_scene(np.random.default_rng(0), n_objects=0)


def test_digits_split_is_fixed_and_in_range():
    train, test = digits.load("train"), digits.load("test")
    assert train.images.shape == (1437, 1, 16, 16) and test.images.shape == (360, 1, 16, 16)
    assert train.images.min() >= -1 and train.images.max() <= 1 and train.images.min() == -1
    assert set(np.bincount(test.labels)) <= {35, 36, 37}  # stratified
    from sklearn.datasets import load_digits

    d = load_digits()
    assert len(train.labels) + len(test.labels) == len(d.target)
    with pytest.raises(ValueError, match="split"):
        digits.load("validation")


def test_training_scenes_never_hold_a_held_out_pair():
    from studio.train.diffusion import ShapesRecipe

    recipe = ShapesRecipe.__new__(ShapesRecipe)  # the scene stream only (no text encoder)
    recipe.batch_size = 500
    drawn = [s for step in range(6) for s in recipe.scenes(np.random.default_rng([0, 0, step]))]
    assert not any(shapes.holds_pair(s.kinds) for s in drawn)
    free = [shapes.random_scene(np.random.default_rng([0, 0, i])) for i in range(3000)]
    assert sum(shapes.holds_pair(s.kinds) for s in free) > 20  # without the rule, pairs do occur
    kinds = [k for pair in shapes.HELD_OUT_PAIRS for k in pair]
    assert len(set(kinds)) == len(kinds) == len(shapes.SHAPES) * len(shapes.COLOURS)  # a perfect matching


def test_every_caption_parses_back_to_its_attributes():
    for caption in shapes.all_captions()[1:]:
        a = shapes.parse_concept(caption)
        assert shapes.concept_caption(a["shape"], a["colour"], a["region"]) == caption
    assert shapes.parse_concept("a castle") is None
    assert shapes.parse_concept("A big RED circle, at the top") == {"shape": "circle", "colour": "red", "region": 1}
