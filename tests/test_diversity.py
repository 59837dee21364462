"""Diversity of a prompt's samples (tr0n_rt/diversity.py), and eval's report of it."""
import json
import math

import numpy as np
import pytest

from tr0n_rt.diversity import (
    DUPLICATE,
    Prior,
    PromptImages,
    distinct,
    distinct_images,
    entropy,
    foreground,
    image_features,
    open_attribute_diversity,
    pooled,
    position_size,
    prior_entropy,
    within_class,
)

HEADS = ["shape", "colour"]
COLOURS = ["red", "green", "blue", "yellow"]
S = 32  # synthetic images: 3 x S x S in [-1, 1]


def verdict(shape, colour, wanted_shape=None, wanted_colour=None):
    return {"shape": shape, "colour": colour, "wanted": {"shape": wanted_shape, "colour": wanted_colour}}


def square(x0: int, y0: int, side: int, fg=(1.0, -1.0, -1.0), bg=(-1.0, -1.0, 1.0)) -> np.ndarray:
    """A 3 x S x S image: a side x side square of colour fg with its top-left pixel at column x0, row y0, on bg."""
    img = np.empty((3, S, S), np.float32)
    img[:] = np.array(bg, np.float32)[:, None, None]
    img[:, y0:y0 + side, x0:x0 + side] = np.array(fg, np.float32)[:, None, None]
    return img


def random_squares(rng, n: int) -> np.ndarray:
    """n squares of sides 4 .. 12 anywhere inside a 2-pixel margin: [n, 3, S, S]."""
    sides = rng.integers(4, 13, n)
    return np.stack([square(int(rng.integers(2, S - 1 - s)), int(rng.integers(2, S - 1 - s)), int(s)) for s in sides])


def test_entropy():
    assert entropy(["a"] * 5) == 0
    assert math.isclose(entropy(["a", "b"]), math.log(2))
    assert math.isclose(entropy(["a", "b", "c", "d"]), math.log(4))


def test_prior_entropy_compares_at_the_same_sample_size():
    prior = COLOURS * 100  # uniform over 4 colours
    assert math.isclose(prior_entropy(prior, len(prior)), math.log(4))
    two = prior_entropy(prior, 2)  # two draws: log 2 when they differ (3/4 of the time without replacement)
    assert 0.7 * math.log(2) < two < 0.8 * math.log(2)


def test_open_attributes_only_and_normalised_by_the_prior():
    rng = np.random.default_rng(0)
    prior = [verdict(s, c) for s, c in zip(rng.choice(["circle", "star"], 400), rng.choice(COLOURS, 400))]
    one_colour = [verdict("star", "red", wanted_shape="star")] * 8  # colour open, always red
    spread = [verdict("star", c, wanted_shape="star") for c in COLOURS * 2]  # colour open, all four twice
    q = ["a star"] * 8 + ["a star please"] * 8
    report = open_attribute_diversity(q, one_colour + spread, prior, HEADS)
    assert report["open_pairs"] == 2 and report["prompts"] == 2  # shape is named in both: not open
    assert set(report["per_head"]) == {"colour"}
    alone = open_attribute_diversity(q[:8], one_colour, prior, HEADS)
    assert alone["mean"] == 0.0
    wide = open_attribute_diversity(q[8:], spread, prior, HEADS)["mean"]
    assert wide > 1.0  # evenly spread: more than 8 random prior draws show on average
    assert math.isclose(report["mean"], wide / 2)


def test_nothing_open_is_not_a_number():
    prior = [verdict("star", "red")] * 10
    report = open_attribute_diversity(["a red star"] * 3, [verdict("star", "red", "star", "red")] * 3, prior, HEADS)
    assert not report["defined"] and math.isnan(report["mean"])


def test_distinct_counts_chains_of_near_copies_as_one():
    same = np.eye(6, dtype=bool)
    same[0, 1] = same[1, 0] = same[1, 2] = same[2, 1] = same[4, 5] = same[5, 4] = True  # 0-1-2, 3, 4-5
    assert distinct(same) == 3
    img = square(4, 4, 8)
    near = img + np.float32(DUPLICATE / 2)  # mean |difference| = DUPLICATE / 2: the same image
    far = img + np.float32(DUPLICATE * 2)
    assert distinct(image_features(np.stack([img, near, img])).same) == 1
    assert distinct(image_features(np.stack([img, far])).same) == 2


def test_distinct_images_fraction_and_prior_at_the_same_n():
    rng = np.random.default_rng(0)
    # 108 squares 3 pixels apart or of another size: no two the same image, f_prior = 1
    prior = image_features(np.stack([square(x, y, s) for x in range(2, 18, 3) for y in range(2, 18, 3)
                                     for s in (4, 8, 12)]))
    copies = image_features(np.stack([square(4, 4, 8)] * 4))  # one image 4 times
    report = distinct_images([copies, image_features(random_squares(rng, 4))], prior)
    assert report["prior_fraction"] == {"@4": 1.0}
    assert math.isclose(report["fraction"], (1 / 4 + 1) / 2) and math.isclose(report["mean"], report["fraction"])
    # a prior of two images: 2 draws differ half the time, so f_prior(2) = (1 + 2 * 1) / 2 / 2 = 0.75 (about)
    two = image_features(np.stack([square(4, 4, 8), square(20, 20, 8)] * 100))
    pair = distinct_images([image_features(np.stack([square(4, 4, 8), square(20, 20, 8)]))], two)
    assert 0.7 < pair["prior_fraction"]["@2"] < 0.8
    assert math.isclose(pair["mean"], 1 / pair["prior_fraction"]["@2"], rel_tol=1e-3)  # > 1: more than the generator


def test_foreground_centroid_and_size_in_image_units():
    centroids, sizes = foreground(np.stack([square(20, 4, 8), np.full((3, S, S), 0.5, np.float32)]))
    # columns 20 .. 27: x = mean (j + 0.5) / 32 = 24 / 32; rows 4 .. 11: y = 8 / 32; 64 of 1024 pixels
    assert np.allclose(centroids[0], [0.75, 0.25]) and math.isclose(sizes[0], 0.25)
    assert np.isnan(centroids[1]).all() and np.isnan(sizes[1])  # plain image: empty mask
    # a faint square (contrast 0.2 on a grey background) and a soft edge give the same mask
    faint = square(20, 4, 8, fg=(0.2, 0.2, 0.2), bg=(0.0, 0.0, 0.0))
    faint[:, 3, 20:28] = 0.05  # a row of edge pixels under half the contrast
    c, s = foreground(faint[None])
    assert np.allclose(c[0], [0.75, 0.25]) and math.isclose(s[0], 0.25)


def test_position_size_spread_and_its_normalisation():
    rng = np.random.default_rng(1)
    prior = image_features(random_squares(rng, 512))
    same = image_features(np.stack([square(10, 10, 6)] * 4))
    moved = image_features(np.stack([square(x, 10, 6) for x in (2, 8, 14, 20)]))  # only the position varies
    report = position_size([same, moved], prior)
    assert report["prompts"] == 2 and report["empty_masks"] == 0
    alone = position_size([same], prior)
    assert alone["position"] == 0 and alone["size"] == 0
    spread = position_size([moved], prior)
    assert spread["position"] > 0 and spread["size"] == 0
    # prompts drawn like the prior score 1 on average: the prior is compared at the prompt's n (3), where a
    # std is ~0.7 of the prior's full std; normalised by that full std they would score ~0.7
    like = position_size([image_features(random_squares(rng, 3)) for _ in range(300)], prior)
    assert 0.9 < like["position"] < 1.1 and 0.9 < like["size"] < 1.1


def test_position_size_skips_empty_masks():
    rng = np.random.default_rng(2)
    prior = image_features(random_squares(rng, 100))
    blank = np.full((3, S, S), -1.0, np.float32)
    group = image_features(np.stack([square(4, 4, 6), blank, square(20, 4, 6)]))
    report = position_size([group, image_features(np.stack([blank, blank, square(4, 4, 6)]))], prior)
    assert report["empty_masks"] == 3 and report["skipped_prompts"] == 1 and report["prompts"] == 1
    assert "position@2" in report["prior_std"]  # the prompt's 2 non-empty samples, compared at n = 2


def test_pooled_averages_cells():
    img = np.zeros((1, 1, 16, 16), np.float32)
    img[0, 0, :2, :2] = 1.0  # the top-left cell of 2 x 2 pixels
    p = pooled(img).reshape(8, 8)
    assert p[0, 0] == 1.0 and p.sum() == 1.0
    odd = pooled(np.ones((2, 3, 10, 10), np.float32))  # 10 pixels in 8 cells of 1 or 2
    assert odd.shape == (2, 3 * 64) and np.allclose(odd, 1.0)


def class_verdicts(target, predicted):
    return [{"target": target, "predicted": p, "correct": p == target} for p in predicted]


def test_within_class_normalised_by_the_same_class():
    rng = np.random.default_rng(3)
    base = {"3": square(8, 8, 12), "7": square(16, 4, 10)}

    def noisy(k, std, n):
        return base[k] + rng.normal(0, std, (n, 3, S, S)).astype(np.float32)

    # the generator's 3s vary with std 0.4, its 7s with std 4: a 3-prompt is compared with the 3s only
    images = np.concatenate([noisy("3", 0.4, 100), noisy("7", 4.0, 100)])
    prior = Prior(image_features(images), [{"class": "3"}] * 100 + [{"class": "7"}] * 100)
    half = (image_features(noisy("3", 0.2, 6)), class_verdicts("3", ["3"] * 6))
    same = (image_features(noisy("7", 4.0, 6)), class_verdicts("7", ["7"] * 6))
    report = within_class([half, same], prior, "class")
    assert report["prompts"] == 2 and report["excluded_samples"] == 0
    assert 0.45 < report["per_class"]["3"] < 0.55  # half the noise: half the distance
    assert 0.9 < report["per_class"]["7"] < 1.1
    assert math.isclose(report["mean"], (report["per_class"]["3"] + report["per_class"]["7"]) / 2)
    # samples judged as another class are left out and counted; fewer than 2 left: the prompt is skipped
    wrong = (image_features(noisy("3", 4.0, 3)), class_verdicts("3", ["3", "7", "7"]))
    left = within_class([half, wrong], prior, "class")
    assert left["excluded_samples"] == 2 and left["skipped_prompts"] == 1 and left["prompts"] == 1


def test_prompt_images_keep_features_not_images():
    rng = np.random.default_rng(4)
    images = random_squares(rng, 6)
    gathered = PromptImages(3)
    gathered.add([0, 0], images[:2], ["a", "b"])  # batches that cut a prompt in two
    assert len(gathered.pending) == 1
    gathered.add([0, 1, 1, 1], images[2:], ["c", "d", "e", "f"])
    assert not gathered.pending  # both prompts complete: no image is held
    (_, v0), (f1, v1) = gathered.groups()
    assert v0 == ["a", "b", "c"] and v1 == ["d", "e", "f"]
    assert np.array_equal(f1.sizes, image_features(images[3:]).sizes)


@pytest.mark.parametrize("world", ["shapes", "digits"])
def test_eval_reports_diversity(world, tmp_path):
    """Mixture mode with T = 0 gives one image per prompt for every seed: known values end to end."""
    from tr0n_rt.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a star\na blue shape\n" if world == "shapes" else "3\n7\n")
    out = tmp_path / "eval.json"
    assert main(["eval", "--world", world, "--prompts", str(prompts), "--samples", "3", "--steps", "0",
                 "--mode", "mixture", "--json", str(out)]) == 0
    div = json.loads(out.read_text())["diversity"]
    assert div["defined"] and div["mean"] == 0.0
    distinct, spread = div["distinct_images"], div["position_size"]
    assert math.isclose(distinct["fraction"], 1 / 3) and distinct["prior_fraction"] == {"@3": 1.0}
    assert spread["prompts"] == 2 and spread["position"] == 0 and spread["size"] == 0
    assert spread["prior_std"]["position@3"] > 0 and spread["prior_empty_masks"] == 0
    if world == "shapes":
        assert div["headline"] == "open_attributes" and not div["within_class"]["defined"]
        opened = div["open_attributes"]
        assert opened["open_pairs"] == 4 and opened["samples_per_prompt"] == [3] and opened["prior_samples"] == 512
        assert div["per_head"] == opened["per_head"]
    else:
        assert div["headline"] == "within_class" and not div["open_attributes"]["defined"]
        within = div["within_class"]
        assert set(within["per_class"]) == {"3", "7"} and within["excluded_samples"] == 0
        assert all(d > 0 for d in within["prior_distance"].values()) and div["per_head"] == {}
