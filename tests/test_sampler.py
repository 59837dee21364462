"""The sampler over the torch backend: batch invariance, energy descent, modes, bad input."""
from pathlib import Path

import numpy as np

from tr0n_rt import noise
import pytest

from tr0n_rt.backends import open_backend
from tr0n_rt.errors import ConfigError, PromptError, ShapeError, UnknownModelError
from tr0n_rt.sampler import Sampler
from tr0n_rt.settings import SamplingConfig

PROMPTS = ["a red circle", "a blue square on a white background", "red", "blue circle",
           "a red square", "white background", "a circle", "square on blue"]


@pytest.fixture(scope="module")
def text_sampler(tiny_text_pipeline):
    return Sampler(open_backend("torch", tiny_text_pipeline))


@pytest.mark.parametrize("mode", ["mixture", "sample"])
def test_batch_of_8_equals_8_batches_of_1(text_sampler, mode):
    cfg = SamplingConfig(mode=mode, steps=4, copies=3)
    c = text_sampler.encode_text(PROMPTS)
    seeds = list(range(100, 108))
    batch = text_sampler.sample(c, seeds, cfg)
    for i in range(8):
        one = text_sampler.sample(c[i:i + 1], seeds[i:i + 1], cfg)
        np.testing.assert_allclose(one.images[0], batch.images[i], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(one.energy_trace[:, 0], batch.energy_trace[:, i], rtol=1e-4, atol=1e-6)


def test_same_seed_same_image_other_seed_other_image(text_sampler):
    cfg = SamplingConfig(steps=3, copies=2)
    c = text_sampler.encode_text(["a red circle"] * 3)
    out = text_sampler.sample(c, [5, 5, 6], cfg)
    # Equal up to float32 rounding, not bitwise: torch's CPU kernels may round a row differently by its
    # position in the batch (seen on some CPUs: 6e-8 apart after 3 steps)
    np.testing.assert_allclose(out.images[0], out.images[1], rtol=1e-5, atol=1e-6)
    assert np.abs(out.images[0] - out.images[2]).max() > 1e-4


def test_langevin_lowers_the_energy_towards_a_fixed_target(text_sampler):
    """From the translator's start, T steps of the paper's settings reduce E(z, c) for fixed targets.
    No augmentation and no noise, so E is one deterministic function (a random tiny CLIP's
    augmented cosines are too flat to show descent in 40 steps)."""
    c = text_sampler.encode_text(PROMPTS)
    out = text_sampler.sample(c, list(range(8)), SamplingConfig(steps=40, copies=0, noise_std=0.0))
    e0, e1 = out.energy_trace[0], out.energies
    assert e1.mean() < e0.mean() - 0.03, (e0, e1)
    assert (e1 < e0).sum() >= 6, (e0, e1)


def test_translator_only_uses_the_most_probable_mean(text_sampler):
    c = text_sampler.encode_text(PROMPTS[:2])
    out = text_sampler.sample(c, [0, 1], SamplingConfig(steps=0))
    tr = text_sampler.backend.run("translator", {"condition": c})
    means = tr["means"].numpy()
    best = tr["logits"].numpy().argmax(1)
    np.testing.assert_allclose(out.latents, means[np.arange(2), best], rtol=1e-6)
    assert np.isnan(out.energies).all() and out.images.shape == (2, 3, 16, 16)


def test_images_are_in_range_and_shaped(text_sampler):
    out = text_sampler.sample(text_sampler.encode_text(["a circle"]), [0], SamplingConfig(steps=2, copies=2))
    assert out.images.shape == (1, 3, 16, 16) and out.images.dtype == np.float32
    assert out.images.min() >= -1 and out.images.max() <= 1
    assert set(out.seconds) >= {"translate", "langevin", "decode"}


def test_bad_inputs_are_refused_with_a_fix(text_sampler):
    with pytest.raises(PromptError, match="empty"):
        text_sampler.encode_text(["  "])
    c = text_sampler.encode_text(["a circle"])
    with pytest.raises(ShapeError, match="one seed per row"):
        text_sampler.sample(c, [1, 2])
    with pytest.raises(ShapeError, match=r"expected \[batch, 16\]"):
        text_sampler.sample(np.zeros((1, 5), np.float32), [1])
    with pytest.raises(PromptError, match="text-conditional"):
        text_sampler.encode_classes(["3"])


def test_class_pipeline_takes_classes(tiny_class_pipeline):
    s = Sampler(open_backend("torch", tiny_class_pipeline))
    c = s.conditions(["2", "digit 3"])
    np.testing.assert_array_equal(c.argmax(1), [2, 3])
    out = s.sample(c, [0, 1], SamplingConfig(steps=3, copies=2))
    assert out.images.shape == (2, 1, 16, 16) and np.isfinite(out.energies).all()
    with pytest.raises(PromptError, match="known: 0, 1, 2, 3"):
        s.conditions(["7"])
    with pytest.raises(PromptError, match="class-conditional"):
        s.encode_text(["a circle"])


def test_prior_init_starts_from_the_seeded_standard_normal(text_sampler):
    c = text_sampler.encode_text(["a red circle", "a blue square"])
    out = text_sampler.sample(c, [3, 4], SamplingConfig(steps=0, init="prior"))
    expected = noise.normal(np.array([3, 4], np.uint64), noise.INIT, 0, (8,))  # the spec's stream INIT, step 0
    np.testing.assert_array_equal(out.latents, expected)
    moved = text_sampler.sample(c, [3, 4], SamplingConfig(steps=3, copies=2, init="prior"))
    assert np.abs(moved.latents - expected).max() > 1e-3


# --- the embedding API: Sampler.open + generate --------------------------------------------------------------
def test_generate_is_condition_major_with_seed_plus_j(text_sampler):
    cfg = SamplingConfig(steps=2, copies=2)
    got = text_sampler.generate(["a red circle", "a blue square"], samples=2, seed=5, config=cfg)
    c = text_sampler.encode_text(["a red circle", "a blue square"])
    want = text_sampler.sample(c[[0, 0, 1, 1]], [5, 6, 5, 6], cfg)
    assert got.seeds == [5, 6, 5, 6]
    np.testing.assert_array_equal(got.images, want.images)
    alone = text_sampler.generate("a blue square", samples=2, seed=5, config=cfg)  # one prompt as a string
    np.testing.assert_allclose(alone.images, got.images[2:], rtol=1e-4, atol=1e-5)


def test_generate_from_embeddings_and_classes(text_sampler, tiny_class_pipeline):
    cfg = SamplingConfig(steps=2, copies=2)
    c = text_sampler.encode_text(["a red circle"])
    a = text_sampler.generate(embeddings=c, seed=1, config=cfg)
    b = text_sampler.generate(["a red circle"], seed=1, config=cfg)
    np.testing.assert_array_equal(a.images, b.images)
    s = Sampler.open(tiny_class_pipeline, backend="torch", steps=2, copies=2)
    out = s.generate(classes=["digit 3", 1], samples=3)
    assert out.images.shape == (6, 1, 16, 16) and out.seeds == [0, 1, 2] * 2
    with pytest.raises(PromptError, match="class-conditional"):
        s.generate(["a circle"])


def test_generate_keeps_images_on_the_device_as_dlpack_arrays(text_sampler):
    torch = pytest.importorskip("torch")
    cfg = SamplingConfig(steps=2, copies=2)
    host = text_sampler.generate(["a red circle"], samples=2, config=cfg)
    dev = text_sampler.generate(["a red circle"], samples=2, config=cfg, output="device")
    assert isinstance(dev.images, torch.Tensor)  # the torch backend's own array, not a host copy
    np.testing.assert_array_equal(torch.from_dlpack(dev.images).numpy(), host.images)


def test_generate_refuses_unclear_requests(text_sampler):
    with pytest.raises(ConfigError, match="exactly one of prompts, classes, embeddings or images"):
        text_sampler.generate()
    with pytest.raises(ConfigError, match="got prompts, embeddings"):
        text_sampler.generate(["a circle"], embeddings=np.zeros((1, 16), np.float32))
    for samples in (0, 2.0, True):
        with pytest.raises(ConfigError, match="samples must be a whole number >= 1"):
            text_sampler.generate(["a circle"], samples=samples)
    with pytest.raises(ConfigError, match="seed must be a whole number >= 0"):
        text_sampler.generate(["a circle"], seed=-1)
    with pytest.raises(ConfigError, match=r"seeds must be whole numbers in \[0, 2\^64\).*\[-3\]"):
        text_sampler.sample(text_sampler.encode_text(["a circle"]), [-3])
    with pytest.raises(ConfigError, match=r"in \[0, 2\^64\), got \[18446744073709551616\]"):
        text_sampler.sample(text_sampler.encode_text(["a circle"]), [2**64])
    with pytest.raises(ConfigError, match="unknown output 'gpu'"):
        text_sampler.generate(["a circle"], output="gpu")
    with pytest.raises(ShapeError, match=r"expected \[batch, 16\]"):
        text_sampler.generate(embeddings=np.zeros((2, 3), np.float32))
    with pytest.raises(ConfigError, match="prompts is empty"):
        text_sampler.generate([])


def test_generate_takes_single_conditions_as_they_come(text_sampler, tiny_class_pipeline):
    cfg = SamplingConfig(steps=1, copies=2)
    c = text_sampler.encode_text(["a red circle"])
    one = text_sampler.generate(embeddings=c[0], config=cfg)  # a single [d_c] embedding is one row
    np.testing.assert_array_equal(one.images, text_sampler.generate(embeddings=c, config=cfg).images)
    s = Sampler.open(tiny_class_pipeline, backend="torch", steps=1, copies=2)
    assert s.generate(classes=2).images.shape[0] == 1 and s.generate(classes="digit 3").images.shape[0] == 1


def test_open_takes_settings_and_names_unknown_backends(tiny_text_pipeline):
    s = Sampler.open(tiny_text_pipeline, backend="torch", preset="fast", steps=3)
    assert (s.config.steps, s.config.copies) == (3, 8)
    with pytest.raises(UnknownModelError, match="known: auto, onnxruntime, tensorrt, torch"):
        Sampler.open(tiny_text_pipeline, backend="tensorflow")
    with pytest.raises(ConfigError, match="unknown sampling setting"):
        Sampler.open(tiny_text_pipeline, backend="torch", temperature=2.0)


@pytest.mark.parametrize("world", ["shapes", "digits"])
def test_shipped_bundles_run_every_mode_on_onnxruntime(world):
    """The shipped step graphs take K = 1 (sample mode, prior init) as well as the translator's K: an
    exporter that fixed K (digits once had means [batch, 10, 32]) made these modes fail on them."""
    pytest.importorskip("onnxruntime")
    s = Sampler.open(world, backend="onnxruntime", steps=2, copies=2)
    condition = {"prompts": "a red circle"} if world == "shapes" else {"classes": "3"}
    for settings in ({}, {"mode": "sample"}, {"init": "prior"}):
        batch = s.generate(**condition, samples=2, config=s.config.with_overrides(**settings))
        assert batch.images.shape[0] == 2 and np.isfinite(batch.images).all(), settings
        assert np.isfinite(batch.energy_trace).all(), settings


def test_a_bare_world_name_opens_the_world_not_a_folder_of_that_name(tmp_path, monkeypatch, tiny_class_pipeline):
    """Sampler.open("shapes") is the shipped world even where ./shapes exists; "./shapes" is the folder."""
    pytest.importorskip("onnxruntime")
    import shutil

    shutil.copytree(tiny_class_pipeline, tmp_path / "shapes")
    monkeypatch.chdir(tmp_path)
    assert Sampler.open("shapes", backend="onnxruntime").info.name == "shapes"
    assert Sampler.open("./shapes", backend="torch").info.name == "tiny-class"


def test_worlds_are_found_beside_the_package_as_a_wheel_installs_them(tmp_path, monkeypatch):
    """A wheel ships engines/ inside the package (tr0n_rt/engines); a source checkout has it beside."""
    from tr0n_rt import paths

    monkeypatch.delenv("TR0N_RT_ENGINES", raising=False)
    assert paths.engines_dir() == Path(paths.__file__).resolve().parent.parent / "engines"
    fake = tmp_path / "site" / "tr0n_rt"
    (fake / "engines" / "shapes").mkdir(parents=True)
    monkeypatch.setattr(paths, "__file__", str(fake / "paths.py"))
    assert paths.engines_dir() == fake / "engines"


def test_sampling_config_refuses_wrong_types_with_a_fix():
    for field, value in (("steps", 2.5), ("copies", "8"), ("steps", True), ("latent_lr", float("nan")),
                         ("noise_std", "0.01")):
        with pytest.raises(ConfigError, match=field):
            SamplingConfig(**{field: value})
    assert SamplingConfig(steps=np.int64(3), latent_lr=1).steps == 3  # numpy ints and int learning rates are fine


def test_tools_never_write_into_an_installed_package():
    from tr0n_rt import paths
    from tr0n_rt.cli import refuse_installed
    from tr0n_rt.errors import Tr0nError

    package = Path(paths.__file__).resolve().parent
    assert paths.inside_installed_package(package / "engines" / "shapes")
    assert not paths.inside_installed_package(package.parent / "engines" / "shapes")  # a source checkout's
    with pytest.raises(Tr0nError, match="never write into: give --out DIR"):
        refuse_installed(package / "engines" / "shapes", "--out DIR")


def _paper_start(logits, means, std, keys, j=0):
    """The paper's z0 ~ q(z | c) of candidate j, written out: component by uniform(COMPONENT, j), then
    means[k] + std * normal(INIT, j) in float32."""
    k = noise.pick_component(noise.softmax(logits, axis=1), noise.uniform(keys, noise.COMPONENT, j, (1,))[:, 0])
    eps = noise.normal(keys, noise.INIT, j, (means.shape[2],))
    return means[np.arange(len(keys)), k].astype(np.float32) + std.astype(np.float32) * eps


def _translator_outputs(b=5, k=4, d=6, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((b, k)).astype(np.float32), rng.standard_normal((b, k, d)).astype(np.float32),
            np.full(d, 0.05, np.float32), noise.check_seeds(list(range(40, 40 + b))))


def test_one_candidate_without_start_noise_is_the_papers_draw_bit_for_bit():
    from tr0n_rt.sampler import sample_start

    logits, means, std, keys = _translator_outputs()
    never = lambda z: pytest.fail("one candidate needs no energy")  # noqa: E731
    z0 = sample_start(SamplingConfig(mode="sample"), keys, logits, means, std, None, never)
    assert z0.dtype == np.float32 and np.array_equal(z0, _paper_start(logits, means, std, keys))


def test_start_noise_adds_its_own_stream_and_bounds_clamp():
    from tr0n_rt.sampler import sample_start

    logits, means, std, keys = _translator_outputs()
    z0 = sample_start(SamplingConfig(mode="sample", start_noise=0.3), keys, logits, means, std, None, None)
    want = _paper_start(logits, means, std, keys) + np.float32(0.3) * noise.normal(keys, noise.START, 0, (6,))
    assert np.array_equal(z0, want)
    clamped = sample_start(SamplingConfig(mode="sample", start_noise=5.0), keys, logits, means, std, 0.5, None)
    assert np.abs(clamped).max() == np.float32(0.5)


def test_candidates_keep_the_lowest_energy_first_of_equals_nan_last():
    from tr0n_rt.sampler import sample_start

    logits, means, std, keys = _translator_outputs()
    draws = [_paper_start(logits, means, std, keys, j) for j in range(3)]
    # energies [3 candidates, 5 rows]: row 0 -> j = 2, row 1 -> equal, first (0), row 2 NaN skipped -> 1,
    # row 3 all NaN -> 0, row 4 -> 1
    table = np.array([[0.5, -1.0, np.nan, np.nan, 0.0],
                      [0.4, -1.0, 0.3, np.nan, -0.2],
                      [-0.1, 0.0, 0.9, np.nan, 0.1]], np.float32)
    calls = []

    def score(z):
        calls.append(z)
        return table[len(calls) - 1]

    z0 = sample_start(SamplingConfig(mode="sample", candidates=3), keys, logits, means, std, None, score)
    assert len(calls) == 3 and all(np.array_equal(c, d) for c, d in zip(calls, draws))
    for row, j in enumerate([2, 0, 1, 0, 1]):
        assert np.array_equal(z0[row], draws[j][row]), row


def test_candidates_are_scored_by_the_energy_with_step_0_augmentations(text_sampler):
    """End to end at T = 0: the sample's latent is the candidate of lowest energy under step 0's
    augmentations, and the candidates differ from the one-candidate draw only by which is kept."""
    c = text_sampler.encode_text(["a red circle", "a circle", "blue"])
    seeds = [7, 8, 9]
    cfg = SamplingConfig(mode="sample", steps=0, copies=3, candidates=4, start_noise=0.5)
    out = text_sampler.sample(c, seeds, cfg)
    keys = noise.check_seeds(seeds)
    aug = noise.uniform(keys, noise.AUGMENT, 0, (3, 8))
    singles = []
    for j in range(4):  # candidate j alone = the one-candidate draw with its streams at step j
        tr = text_sampler.backend.run("translator", {"condition": c})
        lg, mu, sd = (text_sampler.backend.to_host(tr[k]) for k in ("logits", "means", "std"))
        z = _paper_start(lg, mu, sd, keys, j) + np.float32(0.5) * noise.normal(keys, noise.START, j, (mu.shape[2],))
        e = text_sampler.backend.run("energy", {"latent": z, "condition": c, "aug_noise": aug})["energy"]
        singles.append((z, text_sampler.backend.to_host(e)))
    best = np.stack([e for _, e in singles]).argmin(axis=0)
    assert len(set(best.tolist())) > 1 or best[0] != 0  # the test would not notice a selection that keeps draw 0
    for row in range(3):
        np.testing.assert_array_equal(out.latents[row], singles[best[row]][0][row])
