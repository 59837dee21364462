"""Issue 8's features: image conditioning, semantic interpolation, the aesthetic term.

Unit level: the torch-free image preprocessing equals open_clip's eval transform; slerp; the aesthetic
term's arithmetic. Export level: a pipeline with an image translator and an aesthetic head exports,
validates, and runs the same under onnxruntime as under torch. World level (shapes): image
conditions reproduce the image's shape and colour by the judge, the aesthetic head's taste shows in
G's own latent, interpolation endpoints are their conditions' samples.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tr0n_rt.errors import BundleError, ConfigError, PromptError, ShapeError
from tr0n_rt.images import clip_pixels, image_files
from tr0n_rt.interpolate import interpolate, slerp

from .conftest import build_tiny_pipeline

SHAPES = Path(__file__).resolve().parents[1] / "engines" / "shapes"


# --- images in -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size_hw,mode", [((37, 50), "RGB"), ((50, 37), "RGB"), ((24, 24), "RGB"),
                                          ((61, 40), "L"), ((40, 61), "RGBA")])
def test_clip_pixels_equal_open_clip_eval_transform(size_hw, mode):
    import open_clip

    rng = np.random.default_rng(sum(size_hw))
    h, w = size_hw
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    arr = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    img = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)
    mean, std = (0.48, 0.45, 0.41), (0.27, 0.26, 0.28)
    ref = open_clip.image_transform(32, is_train=False, mean=mean, std=std)(img).numpy()
    ours = (clip_pixels(img, 32) - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_image_files_and_bad_images_give_typed_errors(tmp_path):
    with pytest.raises(PromptError, match="does not exist"):
        image_files(tmp_path / "nope.png")
    with pytest.raises(PromptError, match="no image files"):
        image_files(tmp_path)
    (tmp_path / "b.png").write_bytes(b"not a png")
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    assert [f.name for f in image_files(tmp_path)] == ["a.png", "b.png"]
    with pytest.raises(PromptError, match="cannot read image"):
        clip_pixels(tmp_path / "b.png", 8)


# --- interpolation ---------------------------------------------------------------------------------------
def test_slerp_moves_at_constant_angular_speed_on_the_sphere():
    rng = np.random.default_rng(0)
    c0, c1 = (v / np.linalg.norm(v) for v in rng.standard_normal((2, 16)))
    t = np.linspace(0, 1, 7)
    path = slerp(c0, c1, t)
    omega = np.arccos(c0 @ c1)
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), 1.0, atol=1e-6)
    def angle(a, b):  # between unit vectors, well conditioned near 0 (unlike arccos)
        return 2 * np.arcsin(np.linalg.norm(a - b, axis=-1) / 2)

    np.testing.assert_allclose(angle(path, c0), t * omega, atol=1e-5)
    np.testing.assert_allclose(angle(path, c1), (1 - t) * omega, atol=1e-5)


def test_interpolation_endpoints_are_the_conditions_bit_for_bit():
    rng = np.random.default_rng(1)
    c0, c1 = rng.standard_normal((2, 8)).astype(np.float32)
    for kind in ("text", "image", "class"):
        out = interpolate(c0, c1, 5, kind)
        assert out.shape == (5, 8) and out.dtype == np.float32
        assert np.array_equal(out[0], c0) and np.array_equal(out[-1], c1)
    a, b = np.eye(4, dtype=np.float32)[[0, 2]]
    np.testing.assert_allclose(interpolate(a, b, 3, "class")[1], [0.5, 0, 0.5, 0])
    np.testing.assert_allclose(interpolate(c0, c0, 3, "text"), np.stack([c0] * 3), rtol=1e-6)  # w = 0: linear
    with pytest.raises(ConfigError, match="at least 2"):
        interpolate(c0, c1, 1, "text")
    with pytest.raises(ShapeError):
        interpolate(c0, c1[:4], 3, "text")


# --- the aesthetic term ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def featured_pipeline(tmp_path_factory):
    folder = build_tiny_pipeline(tmp_path_factory.mktemp("featured"), "text", image_features=True)
    from tr0n_rt.export.checkpoints import load_state, save_state

    head = load_state(folder / "aesthetic.safetensors")
    save_state({"weight": torch.randn_like(head["weight"]), "bias": torch.tensor([0.3])}, folder / "aesthetic.safetensors")
    return folder


def test_aesthetic_energy_is_minus_similarity_minus_alpha_times_the_mean_head_score(featured_pipeline):
    from tr0n_rt.export.pipeline import TorchPipeline

    p = TorchPipeline.load(featured_pipeline)
    energy = p.energy()
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 8, generator=g)
    c = torch.nn.functional.normalize(torch.randn(2, 16, generator=g), dim=1)
    u = torch.rand(2, 4, 8, generator=g)
    # independently: the embedding of every augmented copy, its cosine to c, the head on it
    from tr0n_rt.export.augment import diff_augment

    x = p.generator(z)
    copies = diff_augment(x.repeat_interleave(4, 0), u.reshape(8, 8), p.augment)
    emb = torch.nn.functional.normalize(p.condition_model.clip.encode_image(p.condition_model.preprocess(copies)), dim=1)
    cos = (emb * c.repeat_interleave(4, 0)).sum(1).reshape(2, 4).mean(1)
    head = (emb @ p.aesthetic.weight[0] + p.aesthetic.bias).reshape(2, 4).mean(1)
    for alpha in (0.0, 0.7):
        torch.testing.assert_close(energy(z, c, u, torch.tensor([alpha])), -cos - alpha * head, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(energy(z, c, u), -cos, rtol=1e-5, atol=1e-6)  # no weight: the similarity alone


def test_aesthetic_head_needs_a_clip_pipeline(tiny_class_pipeline, tmp_path):
    folder = tmp_path / "p"
    shutil.copytree(tiny_class_pipeline, folder)
    from tr0n_rt.export.checkpoints import save_state
    from tr0n_rt.export.pipeline import TorchPipeline

    spec = json.loads((folder / "pipeline.json").read_text())
    save_state({"weight": torch.zeros(1, 4), "bias": torch.zeros(1)}, folder / "aesthetic.safetensors")
    spec["aesthetic"] = {"weights": "aesthetic.safetensors"}
    (folder / "pipeline.json").write_text(json.dumps(spec))
    with pytest.raises(ConfigError, match="CLIP image embeddings"):
        TorchPipeline.load(folder).energy()


def test_aesthetic_weight_without_a_head_is_refused(tiny_text_pipeline):
    from tr0n_rt.backends import open_backend
    from tr0n_rt.sampler import Sampler

    s = Sampler(open_backend("torch", tiny_text_pipeline))
    with pytest.raises(ConfigError, match="aesthetic head"):
        s.sample(np.ones((1, 16), np.float32), [0], s.config.with_overrides(aesthetic_weight=0.5))
    with pytest.raises(ConfigError, match=">= 0"):
        s.config.with_overrides(aesthetic_weight=-1.0)


# --- export and onnxruntime parity -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def featured_bundle(featured_pipeline, tmp_path_factory):
    from tr0n_rt.export.bundle_export import export_bundle

    folder = tmp_path_factory.mktemp("featured_bundle") / "b"
    shutil.copytree(featured_pipeline, folder)
    export_bundle(folder, fp16=True, validate=True, fp16_strict=False)
    return folder


@pytest.mark.slow
def test_image_features_export_validate_and_declare_their_io(featured_bundle):
    m = json.loads((featured_bundle / "manifest.json").read_text())
    assert {"image_encoder", "image_translator"} <= set(m["graphs"])
    for name, report in m["export"]["graphs"].items():
        assert report["fp32"]["max_rel_err"] <= 1e-4, (name, report)
    assert m["graphs"]["image_encoder"]["inputs"]["pixels"]["shape"] == ["batch", 3, 16, 16]
    assert "aesthetic_weight" in m["graphs"]["step"]["inputs"]
    assert set(m["graphs"]["energy"]["outputs"]) == {"energy", "aesthetic"}
    assert m["image_input"]["size"] == 16 and m["aesthetic"] == {"dim": 16}


@pytest.mark.slow
def test_onnxruntime_equals_torch_on_image_conditions_and_aesthetic_weight(featured_bundle, featured_pipeline, tmp_path):
    from tr0n_rt.backends import open_backend
    from tr0n_rt.sampler import Sampler

    rng = np.random.default_rng(5)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (20 + i, 18, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    outs = {}
    for name, folder in (("torch", featured_pipeline), ("onnxruntime", featured_bundle)):
        s = Sampler(open_backend(name, folder))
        c, files = s.image_conditions([tmp_path])
        assert s.image_translator == "image_translator" and len(files) == 3
        cfg = s.config.with_overrides(aesthetic_weight=0.8)
        outs[name] = (c, s.sample(c, [0, 1, 2], cfg, translator=s.image_translator))
    (c_t, a), (c_o, b) = outs["torch"], outs["onnxruntime"]
    np.testing.assert_allclose(c_o, c_t, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b.images, a.images, atol=2e-3)
    np.testing.assert_allclose(b.aesthetic, a.aesthetic, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(b.energy_trace, a.energy_trace, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_a_manifest_whose_aesthetic_field_disagrees_with_the_step_is_refused(featured_bundle, tmp_path):
    folder = tmp_path / "b"
    shutil.copytree(featured_bundle, folder)
    m = json.loads((folder / "manifest.json").read_text())
    m["aesthetic"] = None
    (folder / "manifest.json").write_text(json.dumps(m))
    from tr0n_rt.bundle import load_bundle

    with pytest.raises(BundleError, match="aesthetic_weight"):
        load_bundle(folder)


# --- the shapes world ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes_sampler():
    pytest.importorskip("onnxruntime")
    from tr0n_rt.backends import open_backend
    from tr0n_rt.sampler import Sampler

    return Sampler(open_backend("onnxruntime", SHAPES))


@pytest.fixture(scope="module")
def shapes_judge():
    from tr0n_rt.judge import RuntimeJudge

    return RuntimeJudge.from_bundle(SHAPES)


@pytest.mark.slow
def test_shapes_image_conditions_reproduce_shape_and_colour(shapes_sampler, shapes_judge, tmp_path):
    """Procedural images (drawn with PIL, not by G) of known attributes, written as PNG files: TR0N
    conditioned on each file must draw its shape, colour and background (by the independent judge)."""
    from tr0n_rt.export.worlds.shapes import data
    from tr0n_rt.images import to_pil

    attrs = data.sample_attributes(30, np.random.default_rng(2024))
    for i, img in enumerate(data.render(attrs).numpy()):
        to_pil(img).save(tmp_path / f"{i:02d}.png")
    c, files = shapes_sampler.image_conditions([tmp_path])
    assert [f.name for f in files] == [f"{i:02d}.png" for i in range(30)]
    prompts = [f"a {a.colour} {a.shape} on a {a.background} background" for a in attrs]
    s = shapes_sampler
    for steps in (0, 25):
        out = s.sample(c, list(range(30)), s.config.with_overrides(steps=steps), translator=s.image_translator)
        accuracy = np.mean([v["correct"] for v in shapes_judge.verdicts(out.images, prompts)])
        assert accuracy >= 0.9, (steps, accuracy)


@pytest.mark.slow
def test_shapes_aesthetic_term_draws_larger_shapes_and_keeps_the_prompt(shapes_sampler, shapes_judge):
    """The world's head likes large shapes (fitted on procedural images). With alpha = 0.5 the radius that
    G reads from the final latent (renderer.py: z[16]) grows, and the judge still accepts the prompt."""
    from tr0n_rt.export.worlds.shapes import data

    prompts = [p for p in (SHAPES / "prompts.txt").read_text().splitlines() if p][::5][:24]
    s = shapes_sampler
    c = s.conditions(prompts)
    lo, hi = data.RADIUS_RANGE
    radius, accuracy, aesthetic = {}, {}, {}
    for alpha in (0.0, 0.5):
        # mixture mode, where RESULTS.md measured the term (the default sample mode keeps 92% at alpha 0.5)
        out = s.sample(c, list(range(len(prompts))), s.config.with_overrides(aesthetic_weight=alpha, mode="mixture"))
        radius[alpha] = np.mean(lo + (hi - lo) / (1 + np.exp(-1.6 * out.latents[:, 16])))
        accuracy[alpha] = np.mean([v["correct"] for v in shapes_judge.verdicts(out.images, prompts)])
        aesthetic[alpha] = out.aesthetic.mean()
    assert radius[0.5] > radius[0.0] + 0.03, radius
    assert aesthetic[0.5] > aesthetic[0.0] + 0.3, aesthetic
    assert accuracy[0.5] >= 0.95 and accuracy[0.0] >= 0.95, accuracy


def _cli(*argv):
    from tr0n_rt.cli import main

    return main([str(a) for a in argv])


def test_cli_interpolates_two_prompts_into_a_strip_whose_ends_are_their_samples(tmp_path):
    pytest.importorskip("onnxruntime")
    a, b = "a red circle on a white background", "a blue square on a black background"
    # mixture mode: the strip runs its 5 conditions as one batch and the plain samples one at a time, and only
    # there do the worlds' images not depend on the batch size (sample mode's Langevin with candidates can
    # end elsewhere: docs/bundle-format.md section 7, "across batch sizes, not bit for bit")
    mode = ["--mode", "mixture"]
    assert _cli("sample", a, b, "--interpolate", 5, "--out", tmp_path / "strip", "--seed", 3, *mode) == 0
    rec = json.loads((tmp_path / "strip" / "samples.json").read_text())
    assert (tmp_path / "strip" / "strip.png").is_file() and rec["interpolation"]["method"] == "slerp"
    ts = [r["t"] for r in rec["images"]]
    assert ts == [0.0, 0.25, 0.5, 0.75, 1.0]
    judged = [r["judge"] for r in rec["images"]]
    assert judged[0]["correct"] and judged[-1]["correct"] and judged[1:-1] == [None] * 3
    assert _cli("sample", a, "--out", tmp_path / "a", "--seed", 3, *mode) == 0
    assert _cli("sample", b, "--out", tmp_path / "b", "--seed", 3, *mode) == 0
    for end, folder in ((rec["images"][0], "a"), (rec["images"][-1], "b")):
        plain = json.loads((tmp_path / folder / "samples.json").read_text())["images"][0]
        assert np.array_equal(np.asarray(Image.open(end["file"])), np.asarray(Image.open(plain["file"])))


def test_cli_samples_image_conditions_with_the_image_translator(tmp_path):
    pytest.importorskip("onnxruntime")
    Image.new("RGB", (40, 32), (230, 20, 20)).save(tmp_path / "red.png")
    assert _cli("sample", "--image", tmp_path / "red.png", "--samples", 2, "--out", tmp_path / "o") == 0
    rec = json.loads((tmp_path / "o" / "samples.json").read_text())
    assert rec["conditioning"] == "image" and rec["translator"] == "image_translator"
    assert [r["image"] for r in rec["images"]] == [str(tmp_path / "red.png")] * 2
    assert all(r["judge"] is None for r in rec["images"])


@pytest.mark.parametrize("argv,message", [
    (["sample", "--world", "digits", "--image", "x.png"], "takes no image conditions"),
    (["sample", "a red circle", "a blue star", "a green cross", "--interpolate", "3"], "exactly two endpoints"),
    (["sample", "a red circle", "--image", "x.png"], "not both"),
    (["sample", "--world", "digits", "3", "--aesthetic-weight", "0.5"], "aesthetic head"),
])
def test_cli_refuses_feature_misuse_with_a_clear_message(argv, message, capsys, tmp_path):
    pytest.importorskip("onnxruntime")
    assert _cli(*argv, "--out", tmp_path / "o") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_world_build_stage_adds_an_image_translator_and_the_aesthetic_head(tiny_text_pipeline, tmp_path):
    """build_world's image-feature stage (also add_image_features on a built world): a translator trained
    on the same pairs without condition noise, and the world's head, both loadable by the pipeline."""
    from tr0n_rt.export.pipeline import TorchPipeline
    from tr0n_rt.export.worlds.build import build_image_features

    folder = tmp_path / "p"
    shutil.copytree(tiny_text_pipeline, folder)
    p = TorchPipeline.load(folder)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(256, 8, generator=g)
    c = torch.nn.functional.normalize(torch.randn(256, 16, generator=g), dim=1)
    parts = build_image_features("shapes", folder, p.condition_model, z, c, p.translator.config, seed=0,
                                 progress=False)
    assert parts["image_translator"]["weights"] == "image_translator.safetensors"
    assert parts["aesthetic"]["weights"] == "aesthetic.safetensors"
    assert -1.0 <= parts["aesthetic"]["fit"]["heldout_r2"] <= 1.0
    spec = json.loads((folder / "pipeline.json").read_text())
    (folder / "pipeline.json").write_text(json.dumps({**spec, **parts}))
    q = TorchPipeline.load(folder)
    assert q.image_translator is not None and q.aesthetic is not None
    assert not torch.equal(q.image_translator.means_layer.weight, q.translator.means_layer.weight)


def test_cli_interpolates_two_images_with_the_sources_at_the_strip_ends(tmp_path):
    pytest.importorskip("onnxruntime")
    Image.new("RGB", (32, 32), (230, 20, 20)).save(tmp_path / "red.png")
    Image.new("RGB", (48, 32), (20, 40, 230)).save(tmp_path / "blue.png")
    assert _cli("sample", "--image", tmp_path / "red.png", tmp_path / "blue.png", "--interpolate", 3,
                "--samples", 2, "--out", tmp_path / "o") == 0
    rec = json.loads((tmp_path / "o" / "samples.json").read_text())
    assert rec["translator"] == "image_translator" and rec["interpolation"]["method"] == "slerp"
    assert rec["interpolation"]["endpoints"] == [str(tmp_path / "red.png"), str(tmp_path / "blue.png")]
    assert sorted((r["sample"], r["t"]) for r in rec["images"]) == [(j, t) for j in (0, 1) for t in (0.0, 0.5, 1.0)]
    strip = Image.open(tmp_path / "o" / "strip.png")
    cell = 32 * 4  # 32 px images shown at 4x
    assert strip.width == 5 * cell and strip.height == 2 * (cell + 14)  # source, 3 points, source; 2 rows
