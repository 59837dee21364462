"""Diversity of what a prompt leaves open (tr0n_rt/diversity.py), and eval's report of it."""
import json
import math

import numpy as np
import pytest

from tr0n_rt.diversity import entropy, open_attribute_diversity, prior_entropy

HEADS = ["shape", "colour"]
COLOURS = ["red", "green", "blue", "yellow"]


def verdict(shape, colour, wanted_shape=None, wanted_colour=None):
    return {"shape": shape, "colour": colour, "wanted": {"shape": wanted_shape, "colour": wanted_colour}}


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


@pytest.mark.parametrize("world, defined", [("shapes", True), ("digits", False)])
def test_eval_reports_diversity(world, defined, tmp_path):
    from tr0n_rt.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a star\na blue shape\n" if world == "shapes" else "3\n7\n")
    out = tmp_path / "eval.json"
    assert main(["eval", "--world", world, "--prompts", str(prompts), "--samples", "3", "--steps", "2",
                 "--json", str(out)]) == 0
    div = json.loads(out.read_text())["diversity"]
    assert div["defined"] is defined
    if defined:
        assert div["open_pairs"] == 4 and 0 <= div["mean"] and div["samples_per_prompt"] == [3]
        assert div["prior_samples"] == 512
