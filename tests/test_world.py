"""The mini world: determinism, exact masks, occlusion, captions, pairs, and visual separability."""

import itertools

import numpy as np
import pytest
from scipy import ndimage

from retouch.world import (
    ACCESSORIES,
    BACKGROUNDS,
    COLOUR_RGB,
    SHAPES,
    SIZES,
    VOCABULARIES,
    ObjectSpec,
    SceneSpec,
    World,
    attributes,
    caption,
    caption_templates,
    describe_object,
    pair_caption,
    render_background,
    render_pair,
    render_scene,
    sample_pair,
    sample_scene,
    sentence_bank,
    with_changes,
)
from retouch.world.vocabulary import pattern_rgb, world_profile


_SQUARE = np.ones((3, 3), dtype=bool)


def _erode(mask, pixels):
    return ndimage.binary_erosion(mask, _SQUARE, iterations=pixels)


def _dilate(mask, pixels):
    return ndimage.binary_dilation(mask, _SQUARE, iterations=pixels)


def test_scenes_are_a_pure_function_of_seed_and_index():
    a, b = World(seed=3), World(seed=3)
    for index in (0, 7, 123456):
        spec_a, rendered_a, text_a = a.scene(index)
        spec_b, rendered_b, text_b = b.scene(index)
        assert spec_a == spec_b and text_a == text_b
        np.testing.assert_array_equal(rendered_a.image, rendered_b.image)
        np.testing.assert_array_equal(rendered_a.masks, rendered_b.masks)
    assert [World(seed=4).scene(i)[0] for i in range(5)] != [a.scene(i)[0] for i in range(5)]
    spec, nothing, text = a.scene(7, render=False)
    assert nothing is None and spec == a.scene(7)[0] and text == a.scene(7)[2]


def test_batch_stacks_the_scenes():
    world = World(seed=1)
    batch = world.batch(10, 6)
    assert batch.images.shape == (6, 64, 64, 3) and batch.images.dtype == np.float32
    assert batch.masks.shape == (6, 3, 64, 64)
    for k in range(6):
        spec, rendered, text = world.scene(10 + k)
        np.testing.assert_array_equal(batch.images[k], rendered.image)
        n = len(spec.objects)
        np.testing.assert_array_equal(batch.masks[k, :n], rendered.masks)
        assert not batch.masks[k, n:].any()
        assert batch.specs[k] == spec and batch.captions[k] == text
        assert {name: int(v[k]) for name, v in batch.labels.items()} == attributes(spec)


def test_split_rule_is_stable_and_proportioned():
    splits = [World.split(i) for i in range(10_000)]
    assert splits.count("train") == 9000 and splits.count("val") == 500 and splits.count("test") == 500
    assert World.split(95) == World.split(1095) == "test" and World.split(90) == "val"


def test_images_are_in_range_and_alpha_is_a_partition():
    world = World(seed=2)
    for index in range(40):
        spec, rendered, _ = world.scene(index)
        n = len(spec.objects)
        assert rendered.image.shape == (64, 64, 3) and rendered.image.dtype == np.float32
        assert 0.0 <= rendered.image.min() and rendered.image.max() <= 1.0
        assert rendered.masks.shape == rendered.body_masks.shape == rendered.hat_masks.shape == (n, 64, 64)
        assert rendered.alpha.min() >= 0.0 and rendered.alpha.sum(0).max() <= 1.0 + 1e-5
        # masks of different objects are disjoint, and each is exactly its body plus its hat
        assert rendered.masks.sum(0).max() <= 1
        np.testing.assert_array_equal(rendered.masks, rendered.body_masks | rendered.hat_masks)
        assert not (rendered.body_masks & rendered.hat_masks).any()


def test_outside_the_objects_the_image_is_exactly_the_background():
    world = World(seed=5)
    for index in range(40):
        spec, rendered, _ = world.scene(index)
        empty = render_scene(SceneSpec(spec.background, (), spec.texture_seed))
        untouched = rendered.alpha.sum(0) == 0
        np.testing.assert_array_equal(rendered.image[untouched], empty.image[untouched])
        outside = ~_dilate(rendered.masks.any(0), 2)
        assert untouched[outside].all()
        np.testing.assert_array_equal(rendered.image[outside], empty.image[outside])


@pytest.mark.parametrize("profile, n_objects", [("v1", 2), ("v2", 1)])  # v2 scenes hold one object
def test_plain_objects_show_their_exact_colour_away_from_edges(profile, n_objects):
    rng = np.random.default_rng(0)
    words = world_profile(profile)
    for colour, shape in zip(words.colours, itertools.cycle(words.shapes)):
        spec = sample_scene(rng, n_objects=n_objects, colour=colour, shape=shape, pattern="plain", size="large",
                            profile=profile)
        rendered = render_scene(spec)
        inner = _erode(rendered.body_masks[0], 2)  # 1 px outline + 1 px anti-aliasing
        assert inner.sum() > 50
        np.testing.assert_array_equal(rendered.image[inner], np.broadcast_to(np.float32(COLOUR_RGB[colour]),
                                                                              (inner.sum(), 3)))


def test_patterned_objects_show_colour_and_pattern_shade():
    for pattern in VOCABULARIES["pattern"][1:]:
        spec = SceneSpec("grass", (ObjectSpec("circle", "red", pattern, size="large", x=0.5, y=0.6),), 1)
        rendered = render_scene(spec)
        pixels = rendered.image[_erode(rendered.body_masks[0], 2)]
        base = np.all(pixels == np.float32(COLOUR_RGB["red"]), axis=1).mean()
        shade = np.all(pixels == np.float32(pattern_rgb("red")), axis=1).mean()
        assert base > 0.2 and shade > 0.1, (pattern, base, shade)


@pytest.mark.parametrize("profile", ["v1", "v2"])
def test_later_objects_occlude_earlier_ones(profile):
    first = ObjectSpec("square", "blue", size="large", x=0.45, y=0.6)
    second = ObjectSpec("circle", "yellow", size="medium", x=0.6, y=0.6)
    together = render_scene(SceneSpec("sand", (first, second), 9, profile=profile))
    alone = render_scene(SceneSpec("sand", (first,), 9, profile=profile))
    second_alone = render_scene(SceneSpec("sand", (second,), 9, profile=profile))
    np.testing.assert_array_equal(together.alpha[1], second_alone.alpha[0])  # drawn last: fully visible
    # A pixel's owner is its largest visible coverage, so an anti-aliased rim pixel that the second object
    # shares with the background alone may go to it once the first object covers that background.
    assert (together.masks[1] >= second_alone.masks[0]).all()
    rim = together.masks[1] & ~second_alone.masks[0]
    assert (second_alone.alpha[0][rim] < 1).all() and rim.sum() <= 0.05 * second_alone.masks[0].sum()
    hidden = alone.masks[0] & second_alone.masks[0]
    assert hidden.sum() > 20 and not together.masks[0][hidden].any()
    np.testing.assert_array_equal(together.masks[0], alone.masks[0] & ~together.masks[1])


def test_hats_sit_on_top_of_the_body():
    for shape in SHAPES:
        spec = SceneSpec("snow", (ObjectSpec(shape, "white", accessory="hat", size="small", x=0.5, y=0.6),), 2)
        rendered = render_scene(spec)
        hat, body = rendered.hat_masks[0], rendered.body_masks[0]
        assert hat.sum() >= 12, shape
        hat_rows, body_rows = np.nonzero(hat)[0], np.nonzero(body)[0]
        assert hat_rows.min() < body_rows.min() and hat_rows.mean() < body_rows.mean() - 3, shape
        bare = render_scene(with_changes(spec, accessory="none"))
        assert not bare.hat_masks.any()


def test_sizes_are_ordered():
    for shape in SHAPES:
        areas = [render_scene(SceneSpec("sky", (ObjectSpec(shape, "red", size=s, x=0.5, y=0.6),), 0)).masks.sum()
                 for s in SIZES]
        assert areas[0] < areas[1] < areas[2], (shape, areas)


@pytest.mark.parametrize("size", ["small", "medium"])
def test_shapes_are_distinguishable_at_64(size):
    masks = {shape: render_scene(SceneSpec("sky", (ObjectSpec(shape, "red", size=size),), 0)).masks[0]
             for shape in SHAPES}
    for a, b in itertools.combinations(SHAPES, 2):
        differ = (masks[a] ^ masks[b]).sum() / (masks[a] | masks[b]).sum()
        assert differ >= 0.10, (a, b, differ)


def _texture_features(image):
    luminance = image.mean(-1)
    return np.concatenate([image.mean((0, 1)), image.std((0, 1)),
                           [np.abs(np.diff(luminance, axis=0)).mean(), np.abs(np.diff(luminance, axis=1)).mean()]])


def test_background_textures_are_distinct():
    crops = {bg: [render_background(bg, seed, 64) for seed in range(12)] for bg in BACKGROUNDS}
    means = {bg: np.mean([c.mean((0, 1)) for c in cs], axis=0) for bg, cs in crops.items()}
    for a, b in itertools.combinations(BACKGROUNDS, 2):
        assert np.linalg.norm(means[a] - means[b]) > 0.1, (a, b)
    # a nearest-centroid classifier on colour and texture statistics tells every crop's kind
    train = {bg: np.mean([_texture_features(c) for c in cs[:6]], axis=0) for bg, cs in crops.items()}
    scale = np.std(np.stack(list(train.values())), axis=0) + 1e-6
    for bg, cs in crops.items():
        for crop in cs[6:]:
            distances = {k: np.linalg.norm((_texture_features(crop) - v) / scale) for k, v in train.items()}
            assert min(distances, key=distances.get) == bg
    # different seeds give different crops of the same kind
    assert not np.array_equal(crops["grass"][0], crops["grass"][1])


def test_pairs_share_one_background_and_differ_only_in_the_changed_object():
    rng = np.random.default_rng(4)
    for _ in range(5):
        left, right = sample_pair(rng, {"pattern": "striped"})
        a, b = left.objects[0], right.objects[0]
        assert a.pattern != "striped" and b.pattern == "striped"
        assert (a.shape, a.colour, a.size, a.x, a.y) == (b.shape, b.colour, b.size, b.x, b.y)
        rendered = render_pair(left, right)
        assert rendered.image.shape == (64, 128, 3) and rendered.masks.shape == (2, 64, 128)
        left_half, right_half = rendered.image[:, :64], rendered.image[:, 64:]
        object_mask = rendered.masks[0, :, :64] | rendered.masks[1, :, 64:]
        outside = ~_dilate(object_mask, 2)
        background = render_background(left.background, left.texture_seed, 64, 128)
        np.testing.assert_array_equal(rendered.image[:, :64][outside], background[:, :64][outside])
        np.testing.assert_array_equal(rendered.image[:, 64:][outside], background[:, 64:][outside])
        # the object's silhouette is the same on both sides; only its inside changes
        np.testing.assert_array_equal(rendered.masks[0, :, :64], rendered.masks[1, :, 64:])
        assert not np.array_equal(left_half[object_mask], right_half[object_mask])
    for change in ({"accessory": "hat"}, {"shape": "square"}, {"size": "large"}):
        left, right = sample_pair(rng, change)
        key, value = next(iter(change.items()))
        assert getattr(left.objects[0], key) != value and getattr(right.objects[0], key) == value
    with pytest.raises(ValueError):
        sample_pair(rng, {"background": "snow"})


def test_pair_rendering_matches_the_world_helper_and_captions():
    left, right, rendered, prompts = World(seed=0).pair(2, {"accessory": "hat"})
    assert rendered.hat_masks[1].any() and not rendered.hat_masks[0].any()
    assert prompts.shared.startswith("the same ") and "on the left and right" in prompts.shared
    assert "hat" not in prompts.shared and "hat" in prompts.right and "hat" not in prompts.left
    assert pair_caption(left, right) == prompts


@pytest.mark.parametrize("profile", ["v1", "v2"])
def test_captions_name_the_attributes(profile):
    world = World(seed=0, profile=profile)
    seen = set()
    for index in range(400):
        spec, _, text = world.scene(index, render=False)
        words = text.replace(",", " ").split()
        seen.update(words)
        for obj in spec.objects:
            assert obj.colour in words and obj.shape in words
            if obj.pattern != "plain":
                assert obj.pattern in words
        assert spec.background in words
        assert ("hat" in words) == any(o.accessory == "hat" for o in spec.objects)
    unsaid = set()  # words a profile samples but never captions
    if not world.profile.caption_size:
        unsaid |= set(VOCABULARIES["size"])
    if not world.profile.caption_position:
        unsaid |= set(VOCABULARIES["position"])
    missing = {w for ws in world.vocabularies.values() for w in ws if w != "none"} - unsaid - seen
    assert not missing
    assert caption(spec) == caption(spec)  # canonical without an rng
    assert caption(spec, np.random.default_rng(1)) == caption(spec, np.random.default_rng(1))
    obj = ObjectSpec("circle", "red", "striped", "hat")
    assert describe_object(obj) == "red striped circle wearing a hat"
    one = SceneSpec("grass", (obj,), 0)
    assert caption(one) == "a red striped circle wearing a hat on grass"
    assert caption(one, template=1) == "a photo of a red striped circle wearing a hat on grass"
    assert len(caption_templates()) >= 6 and all("{things}" in t for t in caption_templates())
    two = SceneSpec("sand", (ObjectSpec("circle", "red"), ObjectSpec("square", "orange")), 0)
    assert caption(two) == "a red circle and an orange square on sand"


@pytest.mark.parametrize("profile, words", [
    ("v1", ("circle", "square", "plain", "striped", "hat", "red", "large", "left", "snow")),
    ("v2", ("circle", "square", "plain", "striped", "checkered", "hat", "red", "large", "snow")),
])
def test_sentence_banks_contain_their_word_and_vary(profile, words):
    for word in words:
        bank = sentence_bank(word, 12, np.random.default_rng(0), profile=profile)
        assert len(bank) == 12 and len(set(bank)) >= 8
        assert all(word in sentence.split() for sentence in bank), (word, bank)
    assert sentence_bank("circle", 5, np.random.default_rng(3)) == sentence_bank("circle", 5, np.random.default_rng(3))


def test_fixed_attributes_changes_and_labels():
    rng = np.random.default_rng(8)
    spec = sample_scene(rng, background="water", shape="heart", colour="cyan", pattern="dotted",
                        accessory="hat", size="small", n_objects=3)
    main = spec.objects[0]
    assert spec.background == "water" and len(spec.objects) == 3
    assert (main.shape, main.colour, main.pattern, main.accessory, main.size) == ("heart", "cyan", "dotted", "hat",
                                                                                 "small")
    labels = attributes(spec)
    assert labels["shape"] == SHAPES.index("heart") and labels["accessory"] == ACCESSORIES.index("hat")
    assert labels["background"] == BACKGROUNDS.index("water")
    assert labels["position"] == VOCABULARIES["position"].index(main.position)
    edited = with_changes(spec, pattern="striped")
    assert edited.objects[0].pattern == "striped" and edited.objects[1:] == spec.objects[1:]
    assert with_changes(main, shape="star").shape == "star"
    with pytest.raises(ValueError):
        with_changes(main, colour="mauve")
    with pytest.raises(ValueError):
        sample_scene(rng, flavour="sweet")


def test_other_resolutions_and_objects_at_the_border():
    spec = SceneSpec("brick", (ObjectSpec("star", "green", "checkered", "hat", "large", x=0.98, y=0.02),
                               ObjectSpec("circle", "white", size="medium", x=0.3, y=0.7)), 11)
    small, big = render_scene(spec, 64), render_scene(spec, 128)
    assert big.image.shape == (128, 128, 3) and big.masks.shape == (2, 128, 128)
    # the same scene at twice the resolution: masks agree after 2x2 pooling, up to edge pixels
    pooled = big.masks.reshape(2, 64, 2, 64, 2).mean((2, 4)) > 0.5
    assert (pooled ^ small.masks).sum() / small.masks.sum() < 0.1
    assert small.masks[0].any() and small.masks[1].any()


def test_edit_scenes_hold_the_source_value_and_swap_one_word():
    from retouch.world.edits import MASK_GROWTH, edit_scenes

    world = World(seed=0, size=64)
    scenes = edit_scenes(world, "circle", "square", 5, split="test")
    assert scenes.images.shape == (5, 3, 64, 64) and scenes.masks.shape == (5, 1, 64, 64)
    for source, target in zip(scenes.sources, scenes.targets):
        assert "circle" in source and target == source.replace("circle", "square")
    # the mask covers the object and MASK_GROWTH pixels around it, and not the whole image
    assert 0 < scenes.masks.mean() < 0.5 and MASK_GROWTH == 2
    with pytest.raises(ValueError, match="different attributes"):
        edit_scenes(world, "circle", "red", 1)


# ---- world profiles (issue 19: a world two CPU cores can learn) ----------------------------
def test_v2_profile_draws_one_large_object_from_its_own_words():
    world = World(seed=3, size=64, profile="v2")
    vocab = world.vocabularies
    for index in range(60):
        spec, rendered, text = world.scene(index)
        assert spec.profile == "v2" and len(spec.objects) == 1
        obj = spec.objects[0]
        assert obj.shape in vocab["shape"] and obj.colour in vocab["colour"] and obj.pattern in vocab["pattern"]
        assert spec.background in vocab["background"] and obj.size in vocab["size"]
        body = rendered.body_masks[0]
        rows, cols = np.flatnonzero(body.any(axis=1)), np.flatnonzero(body.any(axis=0))
        extent = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
        assert extent >= 0.45 * 64, (index, obj, extent)  # half the side: ≥ 7 latent cells at factor 4
        assert obj.colour in text and obj.shape in text and spec.background in text


def test_profiles_keep_the_shared_vocabulary_and_refuse_unknown_names():
    v1, v2 = World(0, profile="v1"), World(0, profile="v2")
    assert v1.vocabularies == VOCABULARIES
    for name, words in v2.vocabularies.items():
        assert set(words) <= set(VOCABULARIES[name])
    assert len(v2.vocabularies["shape"]) < len(SHAPES)
    with pytest.raises(ValueError, match="unknown world profile"):
        World(0, profile="v9")
    with pytest.raises(ValueError, match="unknown world profile"):
        SceneSpec(background="sand", objects=(ObjectSpec("circle", "red"),), profile="v9")


def test_v2_patterns_are_coarser_than_v1():
    obj = ObjectSpec("square", "red", pattern="striped", size="large", x=0.5, y=0.6)
    period = {}
    for profile in ("v1", "v2"):
        rendered = render_scene(SceneSpec(background="snow", objects=(obj,), profile=profile), 64)
        row = int(np.flatnonzero(rendered.body_masks[0].any(axis=1)).mean())
        inside = _erode(rendered.body_masks[0], 2)[row]
        shade = rendered.image[row, inside, 1] > 0.3  # the stripe shade of red is light, the body dark
        transitions = np.count_nonzero(np.diff(shade.astype(int)))
        period[profile] = 2 * inside.sum() / transitions  # pixels per stripe pair along the row
    assert period["v2"] >= 1.5 * period["v1"] and period["v2"] >= 12  # ≥ 3 latent cells per stripe pair


def test_v2_pairs_stay_in_the_profile_and_change_only_the_right_side():
    world = World(seed=1, size=64, profile="v2")
    for index in range(10):
        left, right, rendered, prompts = world.pair(index, {"accessory": "hat"})
        assert left.profile == right.profile == "v2"
        assert left.objects[0].accessory == "none" and right.objects[0].accessory == "hat"
        assert rendered.image.shape == (64, 128, 3)
        assert left.objects[0].colour in world.vocabularies["colour"]


def test_v2_captions_name_what_the_world_varies_and_banks_stay_in_the_profile():
    world = World(seed=4, size=64, profile="v2")
    for index in range(80):
        text = world.scene(index)[2]
        assert not set(text.replace(",", " ").split()) & {"small", "medium", "large", "left", "right", "center"}
    bank = sentence_bank("striped", 20, np.random.default_rng(0), profile="v2")
    assert all("striped" in sentence for sentence in bank)
    assert not any(word in sentence for sentence in bank for word in ("hexagon", "heart", "cyan", "brick"))
