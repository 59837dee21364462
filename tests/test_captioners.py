"""Caption pairs: nucleus sampling, the shapes world's attribute captioner, c = CLIP text embedding of a
caption of G(z), and pairs.json keeping caption pairs and image pairs apart."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tr0n_rt.export.captioners import (
    BlipCaptioner,
    Captioner,
    CaptionerUnavailable,
    NucleusConfig,
    caption_pairs,
    nucleus_probs,
    sample_choices,
)
from tr0n_rt.export.captioner_registry import build_captioner
from tr0n_rt.export.models.registry import build_condition_model, build_generator
from tr0n_rt.export.pairs import load_captions, load_pairs, make_pairs, shard_path
from tr0n_rt.export.pipeline import build_part
from tr0n_rt.export.worlds.shapes import data
from tr0n_rt.export.worlds.shapes.captioner import (
    CAPTION_TEMPLATES,
    GREEDY,
    ShapesAttributeCaptioner,
    save_captioner,
    train_shapes_captioner,
)

from tr0n_rt.errors import ConfigError, UnknownModelError
from tr0n_rt.tokenizer import WordTokenizer, tokenizer_from_dict

from .conftest import TINY_CLIP, WORDS

ENGINE = Path(__file__).resolve().parents[1] / "engines" / "shapes"


def rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def shapes_world():
    """The shipped shapes world's G, CLIP and tokenizer."""
    if not (ENGINE / "clip.safetensors").is_file():
        pytest.skip(f"{ENGINE} is not built")
    spec = json.loads((ENGINE / "pipeline.json").read_text())
    g = build_part(ENGINE, spec["generator"], build_generator, "generator").eval()
    f = build_part(ENGINE, spec["condition_model"], build_condition_model, "condition_model").eval()
    return g, f, tokenizer_from_dict(spec["tokenizer"])


@pytest.fixture(scope="module")
def captioner():
    """A barely trained attribute captioner: its accuracy does not matter here, only its plumbing."""
    return ShapesAttributeCaptioner(net=train_shapes_captioner(steps=4, batch=16, width=8, seed=3))


# -- nucleus sampling --------------------------------------------------------------------------------

def test_nucleus_config_defaults_are_the_references_blip_settings():
    n = NucleusConfig()
    assert (n.sample, n.top_p, n.min_length, n.max_length, n.repetition_penalty, n.captions_per_image) == \
        (True, 0.9, 5, 20, 1.1, 1)


@pytest.mark.parametrize("bad", [
    {"top_p": 0.0}, {"top_p": 1.5}, {"temperature": 0.0}, {"captions_per_image": 0}, {"captions_per_image": 1.5},
    {"min_length": 30}, {"max_length": 0}, {"repetition_penalty": 0.0}, {"num_beams": 0}, {"sample": 1},
    {"top_p": float("nan")}, {"sample": False, "captions_per_image": 2},
])
def test_nucleus_config_refuses_bad_values(bad):
    with pytest.raises(ConfigError):
        NucleusConfig(**bad)


def test_nucleus_keeps_the_smallest_set_whose_mass_reaches_top_p():
    p = torch.tensor([[0.125, 0.5, 0.0625, 0.25, 0.0625]])
    for top_p, kept in [(0.3, {1}), (0.5, {1}), (0.6, {1, 3}), (0.74, {1, 3}), (0.8, {0, 1, 3}),
                        (0.9, None), (1.0, {0, 1, 2, 3, 4})]:
        q = nucleus_probs(p.log(), top_p)[0]
        if kept is None:  # 0.875 + one of two equal 0.0625s: four choices, either tie
            assert (q > 0).sum() == 4 and {0, 1, 3} <= set(torch.nonzero(q).flatten().tolist())
            continue
        assert set(torch.nonzero(q).flatten().tolist()) == kept, (top_p, q)
        idx = sorted(kept)
        torch.testing.assert_close(q[idx], p[0, idx] / p[0, idx].sum())  # renormalised, ratios kept


def test_tiny_top_p_samples_the_argmax():
    logits = torch.randn(300, 7, generator=rng(1))
    for seed in range(4):
        picks = sample_choices(logits, NucleusConfig(top_p=1e-6), rng(seed))
        assert torch.equal(picks, logits.argmax(-1))
    assert torch.equal(sample_choices(logits, NucleusConfig(sample=False), rng(0)), logits.argmax(-1))


def test_full_nucleus_samples_the_softmax_and_high_temperature_flattens_it():
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0]]).expand(20000, 4)
    picks = sample_choices(logits, NucleusConfig(top_p=1.0), rng(2))
    freq = torch.bincount(picks, minlength=4).float() / len(picks)
    torch.testing.assert_close(freq, logits[0].softmax(-1), atol=0.015, rtol=0)
    hot = sample_choices(logits, NucleusConfig(top_p=1.0, temperature=100.0), rng(3))
    freq = torch.bincount(hot, minlength=4).float() / len(hot)
    torch.testing.assert_close(freq, torch.full((4,), 0.25), atol=0.02, rtol=0)
    assert len(set(hot[:20].tolist())) > 1  # samples vary from one draw to the next


# -- the shapes world's captioner ---------------------------------------------------------------------

def test_shapes_captioner_fills_a_template_with_its_attributes(captioner):
    images = data.render(data.sample_attributes(12, np.random.default_rng(0)))
    logits = captioner.attribute_logits(images)
    want = [{h: names[logits[h][i].argmax().item()] for h, names in
             (("shape", data.SHAPES), ("colour", data.COLOUR_NAMES), ("background", data.BACKGROUND_NAMES))}
            for i in range(12)]
    greedy = captioner.caption(images, rng(0), NucleusConfig(sample=False))
    assert greedy == [CAPTION_TEMPLATES[GREEDY].format(**w) for w in want]
    # top_p tiny: the same attributes as greedy, in sampled templates of the world
    narrow = captioner.caption(images, rng(0), NucleusConfig(top_p=1e-6, captions_per_image=3))
    assert len(narrow) == 36
    for i, cap in enumerate(narrow):
        assert {k: v for k, v in data.parse_prompt(cap).items() if v} == \
            {k: v for k, v in want[i // 3].items() if "{" + k + "}" in _template_of(cap)}
    assert len({_template_of(c) for c in narrow}) > 1


def _template_of(caption: str) -> str:
    """The template a caption was made from (every shapes template is told apart by its fixed words)."""
    for t in CAPTION_TEMPLATES:
        words = t.format(shape="S", colour="C", background="B").split()
        got = caption.split()
        if len(words) == len(got) and all(w in "SCB" or w == g for w, g in zip(words, got)):
            return t
    raise AssertionError(f"{caption!r} fills no template")


def test_captions_are_reproducible_from_the_generator(captioner):
    images = data.render(data.sample_attributes(16, np.random.default_rng(1)))
    wide = NucleusConfig(top_p=1.0, temperature=3.0, captions_per_image=2)
    a = captioner.caption(images, rng(5), wide)
    assert a == captioner.caption(images, rng(5), wide)
    assert a != captioner.caption(images, rng(6), wide)


def test_registry_rebuilds_a_saved_captioner(captioner, tmp_path):
    save_captioner(captioner.net, tmp_path / "cap.safetensors")
    again = build_captioner("shapes_attributes", {"weights": tmp_path / "cap.safetensors", "width": 8})
    assert again.name == "shapes_attributes" and again.fingerprint == captioner.fingerprint
    images = data.render(data.sample_attributes(8, np.random.default_rng(2)))
    assert again.caption(images, rng(1)) == captioner.caption(images, rng(1))
    with pytest.raises(UnknownModelError, match="blip, shapes_attributes"):
        build_captioner("git-large")


def test_blip_adapter_says_what_to_install_without_transformers(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    for catch in (ConfigError, ImportError):
        with pytest.raises(catch, match="pip install transformers"):
            BlipCaptioner("/nowhere/blip")
    with pytest.raises(CaptionerUnavailable):
        build_captioner("blip", {"model": "/nowhere/blip"})


# -- caption pairs ------------------------------------------------------------------------------------

def test_caption_pairs_hold_the_clip_text_embedding_of_each_caption(shapes_world, captioner):
    g, f, tok = shapes_world
    z = g.sample_latent(6, generator=rng(0))
    with torch.no_grad():
        z_rep, c, captions = caption_pairs(z, g(z), captioner, f, tok, NucleusConfig(captions_per_image=2), rng(1))
        again = F.normalize(f.clip.encode_text(torch.from_numpy(tok(captions))), dim=-1)  # recomputed apart
    assert len(captions) == 12 and torch.equal(z_rep, z.repeat_interleave(2, 0))
    torch.testing.assert_close(c, again, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c.norm(dim=1), torch.ones(12))


def test_make_pairs_with_a_captioner_is_seeded_resumable_and_recorded(shapes_world, captioner, tmp_path):
    g, f, tok = shapes_world
    nucleus = NucleusConfig(captions_per_image=2)
    kw = {"seed": 7, "shard_size": 10, "batch_size": 4, "progress": False}
    make_pairs(g, f, 25, tmp_path / "a", captioner=captioner, nucleus=nucleus, tokenizer=tok, **kw)
    z, c, spec = load_pairs(tmp_path / "a")
    captions = load_captions(tmp_path / "a")
    assert z.shape == (50, 20) and c.shape == (50, 64) and len(captions) == 50 and spec.num_shards == 3
    assert spec.captioner == {"name": "shapes_attributes", "config": captioner.config(),
                              "nucleus": nucleus.to_dict(), "batch_size": 4}
    with torch.no_grad():
        torch.testing.assert_close(c, F.normalize(f.clip.encode_text(torch.from_numpy(tok(captions))), dim=-1))
    # the same z as image pairs of the same seed: captions draw from the shard's generator after z
    make_pairs(g, f, 25, tmp_path / "img", **kw)
    torch.testing.assert_close(load_pairs(tmp_path / "img")[0], z[::2])
    # same seed, same captions; an interrupted run resumes to the same pairs
    make_pairs(g, f, 25, tmp_path / "b", captioner=captioner, nucleus=nucleus, tokenizer=tok, **kw)
    assert load_captions(tmp_path / "b") == captions
    shard_path(tmp_path / "b", 1).unlink()
    make_pairs(g, f, 25, tmp_path / "b", captioner=captioner, nucleus=nucleus, tokenizer=tok, **kw)
    assert load_captions(tmp_path / "b") == captions and torch.equal(load_pairs(tmp_path / "b")[1], c)
    make_pairs(g, f, 25, tmp_path / "c", captioner=captioner, nucleus=nucleus, tokenizer=tok, **{**kw, "seed": 8})
    assert load_captions(tmp_path / "c") != captions


def test_pairs_json_never_mixes_caption_and_image_pairs(shapes_world, captioner, tmp_path):
    g, f, tok = shapes_world
    kw = {"seed": 1, "shard_size": 8, "batch_size": 8, "progress": False}
    make_pairs(g, f, 8, tmp_path / "img", **kw)
    index = json.loads((tmp_path / "img" / "pairs.json").read_text())
    assert list(index) == ["count", "shard_size", "seed", "latent_dim", "cond_dim", "generator", "condition_model"]
    with pytest.raises(ConfigError, match="other settings.*image embeddings.*captions by 'shapes_attributes'"):
        make_pairs(g, f, 8, tmp_path / "img", captioner=captioner, tokenizer=tok, **kw)
    make_pairs(g, f, 8, tmp_path / "cap", captioner=captioner, tokenizer=tok, **kw)
    with pytest.raises(ConfigError, match="other settings"):
        make_pairs(g, f, 8, tmp_path / "cap", **kw)
    with pytest.raises(ConfigError, match="other settings"):  # other nucleus settings are another provenance
        make_pairs(g, f, 8, tmp_path / "cap", captioner=captioner, tokenizer=tok, nucleus=NucleusConfig(top_p=0.5), **kw)
    other = ShapesAttributeCaptioner(net=train_shapes_captioner(steps=1, batch=8, width=8, seed=4))
    with pytest.raises(ConfigError, match="other settings"):  # so are other captioner weights
        make_pairs(g, f, 8, tmp_path / "cap", captioner=other, tokenizer=tok, **kw)


class BrightnessCaptioner(Captioner):
    """A plug-in captioner in a few lines: names the image by its mean red and blue."""

    name = "brightness"

    def config(self) -> dict:
        return {}

    def caption(self, images, rng, nucleus=None):
        k = (nucleus or NucleusConfig()).captions_per_image
        red = images[:, 0].mean((1, 2)) > images[:, 2].mean((1, 2))
        return [("a red circle" if r else "a blue square") for r in red.tolist() for _ in range(k)]


def test_any_captioner_plugs_into_make_pairs(tmp_path):
    torch.manual_seed(0)
    g = build_generator("dcgan", {"latent_dim": 8, "image_size": 16, "channels": 3, "width": 8}).eval()
    f = build_condition_model("open_clip", {"model_cfg": TINY_CLIP}).eval()
    tok = WordTokenizer(WORDS, context_length=8)
    make_pairs(g, f, 12, tmp_path, captioner=BrightnessCaptioner(), tokenizer=tok, shard_size=12, progress=False)
    _, c, spec = load_pairs(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(c, f.encode_text(torch.from_numpy(tok(load_captions(tmp_path)))))
    assert spec.captioner["name"] == "brightness"


def test_caption_pairs_need_a_text_model_and_its_tokenizer(shapes_world, captioner, tmp_path):
    g, f, tok = shapes_world
    with pytest.raises(ConfigError, match="tokenizer"):
        make_pairs(g, f, 4, tmp_path / "a", captioner=captioner, progress=False)
    with pytest.raises(ConfigError, match="pass a captioner"):
        make_pairs(g, f, 4, tmp_path / "b", nucleus=NucleusConfig(), progress=False)
    clf = build_condition_model("cnn_classifier", {"num_classes": 4, "channels": 3, "image_size": 32, "width": 8})
    with pytest.raises(ConfigError, match="embeds text"):
        make_pairs(g, clf, 4, tmp_path / "c", captioner=captioner, tokenizer=tok, progress=False)
