import numpy as np
import pytest

from dreambooth.world import render as R


def test_render_is_a_pure_function_of_the_scene():
    scene = R.Scene("dog", "red", "striped", "beach", seed=3)
    a, b = R.render(scene), R.render(scene)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, R.render(R.Scene("dog", "red", "striped", "beach", seed=4)))


def object_mask(scene):
    """Pixels that differ from the same scene with the object removed (a black plain object on plain is not drawn)."""
    full = R.render(scene).astype(int)
    empty = R.render(R.Scene(scene.cls, scene.colour, scene.pattern, scene.context, scale=1e-6, seed=scene.seed)).astype(int)
    return np.abs(full - empty).sum(-1) > 30


def test_each_class_has_its_own_silhouette():
    masks = {c: object_mask(R.Scene(c, "blue", "plain", "plain", seed=1)) for c in R.CLASSES}
    for c, m in masks.items():
        assert 60 < m.sum() < 600, c  # visible, and not the whole image
    for a in R.CLASSES:
        for b in R.CLASSES:
            if a < b:
                overlap = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
                assert overlap < 0.75, (a, b, overlap)


def test_contexts_and_colours_show_in_the_pixels():
    means = {c: R.render(R.Scene("vase", "red", "plain", c, scale=1e-6)).reshape(-1, 3).mean(0) for c in R.CONTEXTS}
    for a in R.CONTEXTS:
        for b in R.CONTEXTS:
            if a < b:
                assert np.abs(means[a] - means[b]).max() > 15, (a, b)
    red, blue = (R.render(R.Scene("vase", c, "plain", "plain", seed=0)) for c in ("red", "blue"))
    m = object_mask(R.Scene("vase", "red", "plain", "plain", seed=0))
    assert red[m][:, 0].mean() > red[m][:, 2].mean() + 80 and blue[m][:, 2].mean() > blue[m][:, 0].mean() + 80


def test_patterns_differ_inside_the_object():
    def inked(pattern):  # share of the object's pixels far from its body colour
        inside = R.erode(R.erode(object_mask(R.Scene("teapot", "yellow", "plain", "plain", seed=2))))
        pixels = R.render(R.Scene("teapot", "yellow", pattern, "plain", seed=2))[inside]
        return (np.abs(pixels.astype(int) - np.median(pixels, axis=0)).sum(-1) > 90).mean()

    share = {p: inked(p) for p in R.PATTERNS}
    assert share["plain"] < 0.1 and share["striped"] > share["plain"] + 0.15 and share["dotted"] > share["plain"] + 0.1, share


def test_held_out_combinations_never_appear_in_pretraining_scenes():
    rng = np.random.default_rng(0)
    scenes = [R.random_scene(rng, cls="dog") for _ in range(3000)]
    assert not any((s.colour, s.pattern) == R.HELD_OUT["dog"] for s in scenes)
    assert any(s.colour == "purple" for s in scenes) and any(s.pattern == "dotted" for s in scenes)
    rng = np.random.default_rng(0)
    assert any(
        (s.colour, s.pattern) == R.HELD_OUT["dog"] for s in (R.random_scene(rng, held_out=True, cls="dog") for _ in range(3000))
    )


@pytest.mark.parametrize("seed", range(5))
def test_captions_say_only_what_the_scene_shows(seed):
    rng = np.random.default_rng(seed)
    for _ in range(200):
        s = R.random_scene(rng)
        words = R.caption(s, rng)
        assert s.cls in words.split()
        assert not [c for c in R.COLOURS if c != s.colour and c in words.split()]
        assert not [p for p in R.PATTERNS if p != s.pattern and p in words.split()]
        assert not [c for c, phrase in R.CONTEXTS.items() if phrase and c != s.context and phrase in words]
    assert R.full_caption(R.Scene("cat", "red", "dotted", "snow")) == "a photo of a red dotted cat in the snow"


def test_subject_photos_wear_the_held_out_combination_on_plain_backgrounds():
    scenes = R.subject_scenes("dog", 6)
    assert {(s.cls, s.colour, s.pattern, s.context) for s in scenes} == {("dog", "purple", "dotted", "plain")}
    assert len({(s.x, s.flip, s.scale) for s in scenes}) == 6  # poses vary


def test_the_mask_of_a_render_is_exactly_where_its_object_is():
    for cls in R.CLASSES:
        scene = R.Scene(cls, "blue", "plain", "beach", x=0.42, flip=True, seed=2)
        mask = R.render_mask(scene)
        assert mask.shape == (32, 32) and mask.dtype == np.uint8
        drawn = object_mask(scene)
        assert np.array_equal(mask[drawn] > 0, np.ones(drawn.sum(), bool)), cls  # every drawn pixel is in the mask
        assert (mask[~drawn] == 255).sum() == 0, cls  # no pixel wholly object was left undrawn
        assert np.array_equal(R.render_mask(scene), R.render_mask(R.Scene(cls, "red", "dotted", "snow", x=0.42, flip=True)))
    assert not np.array_equal(R.render_mask(scene), np.fliplr(R.render_mask(scene)))
