"""The onnxruntime backend over exported tiny bundles: parity with torch, FP16, refusals, the graph cache."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

from tr0n_rt.backends import open_backend  # noqa: E402
from tr0n_rt.backends.onnxruntime import AUTO, OrtBackend  # noqa: E402
from tr0n_rt.backends.ort_cache import cache_root  # noqa: E402
from tr0n_rt.errors import BackendError, BundleError, ConfigError  # noqa: E402
from tr0n_rt.sampler import Sampler  # noqa: E402
from tr0n_rt.settings import SamplingConfig  # noqa: E402

QUERIES = {"text": ["a red circle", "a blue square on a white background", "red"], "class": ["0", "3", "digit 1"]}
SEEDS = [3, 4, 5]
def random_conditions(n: int, dim: int, seed: int = 0) -> np.ndarray:
    c = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


# --- the same images as the reference -------------------------------------------------------------------
# Max |ORT - torch| on images in [-1, 1] after 4 steps. Float32 summation order alone gives ~1e-6. The
# class world's logit gradients are ~1e-7, near Adam's eps (1e-8), where m / (sqrt(v) + eps) turns their
# relative rounding differences into lr-sized logit updates: measured 7e-4 (3e-7 with logits_lr = 0).
TOLERANCE = {"text": 1e-4, "class": 3e-3}


@pytest.mark.parametrize("mode", ["mixture", "sample"])
@pytest.mark.parametrize("kind", ["text", "class"])
def test_images_equal_the_torch_backends(request, tmp_path, kind, mode):
    bundle = request.getfixturevalue(f"{kind}_bundle")
    cfg = SamplingConfig(mode=mode, steps=4, copies=3)
    ours, reference = Sampler(OrtBackend.open(bundle, cache_dir=tmp_path)), Sampler(open_backend("torch", bundle))
    c = reference.conditions(QUERIES[kind])
    np.testing.assert_allclose(ours.conditions(QUERIES[kind]), c, atol=1e-5)
    for config, tolerance in ((cfg, TOLERANCE[kind]), (cfg.with_overrides(logits_lr=0.0), 1e-4)):
        a, b = ours.sample(c, SEEDS, config), reference.sample(c, SEEDS, config)
        assert b.images.std() > 0.05  # not blank images agreeing trivially
        assert np.abs(a.images - b.images).max() <= tolerance, (config, np.abs(a.images - b.images).max())
        np.testing.assert_allclose(a.energy_trace, b.energy_trace, atol=1e-5)
        np.testing.assert_allclose(a.energies, b.energies, atol=1e-4)


def test_cpu_returns_numpy_and_casts_integer_tokens(text_bundle, tmp_path):
    be = OrtBackend.open(text_bundle, cache_dir=tmp_path)
    tokens = Sampler(be).tokenizer(["a red circle"], allow_empty=False)
    out64 = be.run("text_encoder", {"tokens": tokens})["condition"]
    out32 = be.run("text_encoder", {"tokens": tokens.astype(np.int32)})["condition"]
    assert isinstance(out64, np.ndarray) and out64.shape == (1, be.info.cond_dim)
    np.testing.assert_array_equal(out64, out32)
    with pytest.raises(BackendError, match="input 'tokens' of graph 'text_encoder' is float32, the graph takes int64"):
        be.run("text_encoder", {"tokens": tokens.astype(np.float32)})


# --- FP16 ---------------------------------------------------------------------------------------------
def fp16_backend(bundle, cache):
    """The FP16 graphs on onnxruntime's CPU: a failure to load them fails the test (it is a regression)."""
    be = OrtBackend.open(bundle, precision="fp16", cache_dir=cache)
    be.load("generator")
    return be


def test_fp16_guard_recomputes_a_non_finite_step_in_float32(text_bundle, tmp_path):
    """A planted NaN in the FP16 step's energy (as an overflow would give) is caught: that step is run on
    the float32 graph instead, the count says so, and the sample stays finite."""
    be = fp16_backend(text_bundle, tmp_path)
    session = be.loaded("step").session
    real_run, calls = session.run, []

    def overflowing(names, feed, *args):
        out = real_run(names, feed, *args)
        calls.append(feed)
        if len(calls) == 2:  # the second step overflows
            out[names.index("energy")] = np.full_like(out[names.index("energy")], np.nan)
        return out
    session.run = overflowing
    assert be.fp16_fallbacks == 0 and OrtBackend.open(text_bundle, cache_dir=tmp_path).fp16_fallbacks is None
    out = Sampler(be).sample(random_conditions(2, 16), [0, 1], SamplingConfig(steps=3, copies=2))
    assert be.fp16_fallbacks == 1 and np.isfinite(out.energy_trace).all() and np.isfinite(out.images).all()
    fp32 = OrtBackend.open(text_bundle, cache_dir=tmp_path)
    np.testing.assert_array_equal(out.energy_trace[1], fp32.run("step", calls[1])["energy"])  # step 2 is float32's
    assert OrtBackend.open(text_bundle, precision="fp16", cache_dir=tmp_path, fp16_guard=False).fp16_fallbacks is None


@pytest.mark.parametrize("steps", [0, 4])
def test_fp16_images_are_close_to_fp32(text_bundle, tmp_path, steps):
    """Measured on 8 images in [-1, 1]: mean |diff| 8e-5 (T = 0) and 5e-5 (T = 4), max 6e-4 both."""
    c, seeds, cfg = random_conditions(8, 16), list(range(8)), SamplingConfig(steps=steps, copies=3)
    a = Sampler(OrtBackend.open(text_bundle, cache_dir=tmp_path)).sample(c, seeds, cfg)
    h = Sampler(fp16_backend(text_bundle, tmp_path)).sample(c, seeds, cfg)
    assert np.isfinite(h.images).all() and np.isfinite(h.energy_trace).all()
    diff = np.abs(a.images - h.images)
    assert diff.mean() <= 1e-3 and diff.max() <= 1e-2, (diff.mean(), diff.max())
    assert diff.max() > 0  # it did run the FP16 graphs


# --- bad bundles are refused at open, before any session or sampling ---------------------------------------
def flip_byte(folder):
    path = folder / "step.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(folder):
    path = folder / "generator.onnx"
    path.write_bytes(path.read_bytes()[:-100])


def edit_manifest(change):
    def damage(folder):
        m = json.loads((folder / "manifest.json").read_text())
        change(m)
        (folder / "manifest.json").write_text(json.dumps(m))
    return damage


def rename_translator_input(m):
    t = m["graphs"]["translator"]["inputs"]
    t["cond"] = t.pop("condition")


DAMAGES = {
    "flipped byte": (flip_byte, "step.onnx does not match its sha256"),
    "truncated file": (truncate, "generator.onnx has \\d+ bytes, the manifest says \\d+"),
    "missing file": (lambda f: (f / "translator.onnx").unlink(), "translator.onnx is missing"),
    "wrong field": (edit_manifest(lambda m: m["condition"].update(dim="16")),
                    re.escape("field 'condition.dim' is '16', expected int")),
    "renamed input": (edit_manifest(rename_translator_input),  # refused by the graph contract at load
                      r"graph translator takes \['cond'\].*contract \(tr0n_rt/graphs.py\) says \['condition'\].*re-export"),
    "wrong dtype": (edit_manifest(lambda m: m["graphs"]["text_encoder"]["inputs"]["tokens"].update(dtype="int32")),
                    "graph 'text_encoder'.*input 'tokens': manifest says int32, the graph has int64"),
    "wrong static dim": (edit_manifest(lambda m: m["graphs"]["generator"]["outputs"]["images"].update(
        shape=["batch", 3, 32, 32])), "graph 'generator'.*output 'images': axis 2 is 16 in the graph, 32 in the manifest"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_bad_bundles_are_refused_at_open(text_bundle, tmp_path, damage):
    bad = tmp_path / "bundle"
    shutil.copytree(text_bundle, bad)
    change, message = DAMAGES[damage]
    change(bad)
    with pytest.raises(BundleError, match=message):
        OrtBackend.open(bad, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # no session was ever created


def test_unknown_graphs_and_providers_are_refused(class_bundle, tmp_path):
    be = OrtBackend.open(class_bundle, cache_dir=tmp_path)
    with pytest.raises(BackendError, match="has no 'text_encoder' graph.*translator"):
        be.run("text_encoder", {"tokens": np.zeros((1, 8), np.int64)})
    with pytest.raises(BackendError, match="takes inputs latent; missing: latent, unknown: z"):
        be.run("generator", {"z": np.zeros((1, 8), np.float32)})
    available = ort.get_available_providers()
    assert be.providers == [p for p in AUTO if p in available]
    with pytest.raises(BackendError, match=r"'npu' is not available .*available: .*CPUExecutionProvider"):
        OrtBackend.open(class_bundle, providers=["npu"])
    if "CUDAExecutionProvider" not in available:
        with pytest.raises(BackendError, match=r"'cuda' is not available .*onnxruntime-gpu"):
            open_backend("onnxruntime", class_bundle, device="cuda")
    assert open_backend("onnxruntime", class_bundle, device="cpu").providers == ["CPUExecutionProvider"]


# --- the optimised-graph cache ------------------------------------------------------------------------
def test_second_open_loads_the_optimised_graphs_from_the_cache(text_bundle, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    c, cfg = random_conditions(2, 16), SamplingConfig(steps=3, copies=2)
    first = OrtBackend.open(text_bundle, cache_dir=cache)
    a = Sampler(first).sample(c, [0, 1], cfg)
    assert set(first.graphs) == {"translator", "step", "energy", "generator"}  # text_encoder: never used, never loaded
    step = first.graphs["step"]
    assert step.source == "graph" and step.cache_file.parent == cache and step.cache_file.is_file()
    assert not list(cache.glob(".*"))  # no temp files left behind
    second = OrtBackend.open(text_bundle, cache_dir=cache)
    b = Sampler(second).sample(c, [0, 1], cfg)
    assert {g.source for g in second.graphs.values()} == {"cache"}
    assert second.graphs["step"].cache_file == step.cache_file
    np.testing.assert_array_equal(a.images, b.images)
    fp16 = OrtBackend.open(text_bundle, precision="fp16", cache_dir=cache)
    assert fp16.cache_key("step") != first.cache_key("step")  # another file, another entry
    monkeypatch.setenv("TR0N_RT_CACHE", str(tmp_path / "elsewhere"))
    assert cache_root() == tmp_path / "elsewhere" / "ort" and cache_root(cache) == cache


def test_load_makes_a_session_once_and_graph_sources_say_where_each_came_from(text_bundle, tmp_path):
    cache = tmp_path / "cache"
    be = OrtBackend.open(text_bundle, cache_dir=cache)
    assert be.graph_sources == {} and be.graph_stats == {} and be.fp16_fallbacks is None
    assert be.load("translator") is None
    session = be.graphs["translator"].session
    be.load("translator")
    assert be.graphs["translator"].session is session  # idempotent
    assert be.graph_sources == {"translator": "graph"}
    again = OrtBackend.open(text_bundle, cache_dir=cache)
    again.load("translator")
    again.load("generator")
    assert again.graph_sources == {"translator": "cache", "generator": "graph"}
    with pytest.raises(BackendError, match="has no 'judge' graph"):
        be.load("judge")


def test_an_unusable_cache_file_is_replaced(text_bundle, tmp_path):
    cache, latent = tmp_path / "cache", np.zeros((2, 8), np.float32)
    be = OrtBackend.open(text_bundle, cache_dir=cache)
    reference = be.run("generator", {"latent": latent})["images"]
    be.load("translator")
    cached, foreign = be.graphs["generator"].cache_file, be.graphs["translator"].cache_file
    for spoil in (lambda: cached.write_bytes(cached.read_bytes()[:200]),  # truncated
                  lambda: shutil.copyfile(foreign, cached)):  # a readable graph, but not this one
        spoil()
        again = OrtBackend.open(text_bundle, cache_dir=cache)
        np.testing.assert_array_equal(again.run("generator", {"latent": latent})["images"], reference)
        assert again.graphs["generator"].source == "graph"
        assert OrtBackend.open(text_bundle, cache_dir=cache).loaded("generator").source == "cache"  # rewritten


def scaled_weights(src: Path, dst: Path) -> None:
    """dst: the graph at src with its largest weight doubled: same inputs and outputs, other results."""
    import onnx

    model = onnx.load(str(src))
    weight = max(model.graph.initializer, key=lambda t: onnx.numpy_helper.to_array(t).size)
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * 2, weight.name))
    onnx.save(model, str(dst))


def test_a_cache_file_altered_with_the_same_io_is_rebuilt_not_run(text_bundle, tmp_path):
    cache, latent = tmp_path / "cache", np.ones((2, 8), np.float32)
    be = OrtBackend.open(text_bundle, cache_dir=cache)
    reference = be.run("generator", {"latent": latent})["images"]
    cached = be.graphs["generator"].cache_file
    assert cached.with_name(f"{cached.name}.sha256").is_file()
    scaled_weights(cached, cached)
    again = OrtBackend.open(text_bundle, cache_dir=cache)
    np.testing.assert_array_equal(again.run("generator", {"latent": latent})["images"], reference)
    assert again.graphs["generator"].source == "graph"


def test_a_graph_replaced_after_open_is_refused(text_bundle, tmp_path):
    """open() verifies every file; a session is made on first use, from bytes hashed again as read."""
    bundle = tmp_path / "bundle"
    shutil.copytree(text_bundle, bundle)
    be = OrtBackend.open(bundle, cache_dir=tmp_path / "cache")
    scaled_weights(bundle / "generator.onnx", bundle / "generator.onnx")
    with pytest.raises(BundleError, match="changed since the bundle was opened"):
        be.run("generator", {"latent": np.ones((1, 8), np.float32)})


def test_threads_and_spinning_reach_every_session(text_bundle, tmp_path):
    be = OrtBackend.open(text_bundle, cache_dir=tmp_path, threads=1, spinning=False)
    options = be.loaded("step").session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    default = OrtBackend.open(text_bundle, cache_dir=tmp_path).loaded("step").session.get_session_options()
    assert default.intra_op_num_threads == 0  # onnxruntime's own choice: one per core
    with pytest.raises(ConfigError, match="threads must be >= 1"):
        OrtBackend.open(text_bundle, cache_dir=tmp_path, threads=0)


def test_auto_picks_onnxruntime_only_with_a_provider_for_the_device(text_bundle, tiny_text_pipeline):
    from tr0n_rt.backends import choose_backend

    assert choose_backend("auto", text_bundle, "cpu") == "onnxruntime"
    cuda_ep = "CUDAExecutionProvider" in ort.get_available_providers()
    assert choose_backend("auto", text_bundle, "cuda") == ("onnxruntime" if cuda_ep else "torch")
    assert choose_backend("auto", tiny_text_pipeline, "cpu") == "torch"  # no manifest.json: not a bundle
    assert choose_backend("tensorrt", tiny_text_pipeline, "cpu") == "tensorrt"
