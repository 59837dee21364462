"""Graphs saved with external data (weights in `{graph}.onnx.data` beside the graph, as ViT-L-14's are):
exported, validated, listed with their checksums, loaded by onnxruntime, and sampled as the
single-file bundle samples. A threshold of 0 bytes forces every graph of a tiny pipeline into that form."""
import json
import shutil
import warnings

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow  # its bundle exports every graph with external weights (~30 s alone, 94 s loaded)

from tests.conftest import export_tiny  # noqa: E402
from tests.test_backend_onnxruntime import random_conditions  # noqa: E402
from tr0n_rt.backends import ort_cache  # noqa: E402
from tr0n_rt.backends.onnx_reader import onnx_io  # noqa: E402
from tr0n_rt.backends.onnxruntime import OrtBackend  # noqa: E402
from tr0n_rt.bundle import file_entry, load_bundle  # noqa: E402
from tr0n_rt.errors import BundleError  # noqa: E402
from tr0n_rt.sampler import Sampler  # noqa: E402
from tr0n_rt.settings import SamplingConfig  # noqa: E402

GRAPHS = ("text_encoder", "image_encoder", "translator", "generator", "energy", "step", "energy_grad", "update")


@pytest.fixture(scope="module")
def external_bundle(tiny_text_pipeline, tmp_path_factory):
    return export_tiny(tiny_text_pipeline, tmp_path_factory.mktemp("external") / "tiny", fp16=True,
                       external_data_threshold=0)


@pytest.fixture(scope="module")
def single_file_bundle(text_bundle):
    return text_bundle


def test_every_graph_keeps_its_weights_in_a_listed_file_beside_it(external_bundle, single_file_bundle):
    m = json.loads((external_bundle / "manifest.json").read_text())
    assert set(m["graphs"]) == set(GRAPHS)
    for graph, entry in m["graphs"].items():
        for precision, name in entry["files"].items():
            data = f"{name}.data"
            assert onnx_io(external_bundle / name)[2] == [data], (graph, precision)
            assert m["files"][data] == file_entry(external_bundle / data)  # sha256 and bytes
            assert (external_bundle / name).stat().st_size < (single_file_bundle / name).stat().st_size
            assert (external_bundle / data).stat().st_mode & 0o777 == (external_bundle / name).stat().st_mode & 0o777
            assert onnx_io(single_file_bundle / name)[2] == []  # the default threshold keeps them in one file
        assert m["export"]["graphs"][graph]["fp32"]["max_rel_err"] <= 1e-4, graph  # validated from the files
        assert m["export"]["graphs"][graph]["fp16"]
    assert not list(external_bundle.glob(".*"))  # no staging folders left behind
    load_bundle(external_bundle)  # every listed file matches its checksum


def test_images_equal_those_of_the_single_file_bundle(external_bundle, single_file_bundle, tmp_path):
    c, cfg = random_conditions(2, 16), SamplingConfig(steps=3, copies=2)
    for precision in ("fp32", "fp16"):
        a = Sampler(OrtBackend.open(external_bundle, precision, cache_dir=tmp_path / "a")).sample(c, [0, 1], cfg)
        b = Sampler(OrtBackend.open(single_file_bundle, precision, cache_dir=tmp_path / "b")).sample(c, [0, 1], cfg)
        assert b.images.std() > 0.05  # not blank images agreeing trivially
        np.testing.assert_array_equal(a.images, b.images)


def test_large_optimised_graphs_are_cached_with_their_weights(external_bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(ort_cache, "CACHE_INLINE_BYTES", 0)  # every graph is "large"
    cache, c, cfg = tmp_path / "cache", random_conditions(2, 16), SamplingConfig(steps=3, copies=2)
    first = OrtBackend.open(external_bundle, cache_dir=cache)
    a = Sampler(first).sample(c, [0, 1], cfg)
    step = first.graphs["step"]
    assert step.source == "graph" and onnx_io(step.cache_file)[2] == [f"{step.cache_file.name}.data"]
    assert not list(cache.glob(".*"))  # no staging folders left behind
    second = OrtBackend.open(external_bundle, cache_dir=cache)
    b = Sampler(second).sample(c, [0, 1], cfg)
    assert {g.source for g in second.graphs.values()} == {"cache"}
    np.testing.assert_array_equal(a.images, b.images)


def test_other_weights_under_the_same_graph_file_get_another_cache_entry(external_bundle, tmp_path):
    """A graph file records only where its weights are, so a re-export with other weights can leave it
    byte for byte the same: the optimised-graph cache must not serve the old weights."""
    other = tmp_path / "other"
    shutil.copytree(external_bundle, other)
    data = other / "generator.onnx.data"
    weights = np.fromfile(data, dtype=np.uint8)
    weights[len(weights) // 2:len(weights) // 2 + 256] ^= 1
    weights.tofile(data)
    m = json.loads((other / "manifest.json").read_text())
    m["files"][data.name] = file_entry(data)
    (other / "manifest.json").write_text(json.dumps(m))
    latent = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
    a, b = OrtBackend.open(external_bundle, cache_dir=tmp_path / "cache"), OrtBackend.open(other, cache_dir=tmp_path / "cache")
    assert a.cache_key("generator") != b.cache_key("generator")
    assert a.cache_key("translator") == b.cache_key("translator")
    assert not np.array_equal(a.run("generator", {"latent": latent})["images"],
                              b.run("generator", {"latent": latent})["images"])


def tamper(folder):
    data = folder / "step.onnx.data"
    weights = np.fromfile(data, dtype=np.uint8)
    weights[len(weights) // 2] ^= 0xFF
    weights.tofile(data)


def unlist(folder):
    m = json.loads((folder / "manifest.json").read_text())
    del m["files"]["step.onnx.data"]
    (folder / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("damage, message", [
    (tamper, "step.onnx.data does not match its sha256"),
    (lambda folder: (folder / "step.onnx.data").write_bytes(b""), "step.onnx.data has 0 bytes"),
    (lambda folder: (folder / "step.onnx.data").unlink(), "step.onnx.data is missing"),
    (unlist, "graph 'step' .* reads weights from step.onnx.data, which the manifest does not list"),
], ids=["tampered", "truncated", "missing", "unlisted"])
def test_damaged_weights_files_are_refused(external_bundle, tmp_path, damage, message):
    bad = tmp_path / "bundle"
    shutil.copytree(external_bundle, bad)
    damage(bad)
    with pytest.raises(BundleError, match=message):
        OrtBackend.open(bad, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # refused before any session was created


def test_re_exporting_one_graph_keeps_the_others_weights_files(external_bundle, tmp_path):
    from tr0n_rt.export.bundle_export import export_bundle

    folder = tmp_path / "bundle"
    shutil.copytree(external_bundle, folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_bundle(folder, fp16=False, validate=False, graphs=["translator"])  # default threshold: one file
    m = json.loads((folder / "manifest.json").read_text())
    assert "step.onnx.data" in m["files"] and "step.fp16.onnx.data" in m["files"]
    assert "translator.onnx.data" not in m["files"] and not (folder / "translator.onnx.data").exists()
    load_bundle(folder)


def test_graph_fingerprint_covers_external_weights():
    """Engines are stamped with the graph's fingerprint: a new .data under the same graph file must change it,
    and a single-file graph keeps its plain sha256 (stamps made before external data stay valid)."""
    from tr0n_rt.bundle import graph_fingerprint

    single = {"files": {"g.onnx": {"sha256": "a" * 64}}}
    assert graph_fingerprint(single, "g.onnx") == "a" * 64
    with_data = {"files": {"g.onnx": {"sha256": "a" * 64}, "g.onnx.data": {"sha256": "b" * 64}}}
    other_data = {"files": {"g.onnx": {"sha256": "a" * 64}, "g.onnx.data": {"sha256": "c" * 64}}}
    assert graph_fingerprint(with_data, "g.onnx") not in ("a" * 64, graph_fingerprint(other_data, "g.onnx"))
