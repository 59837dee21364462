"""The bundle format spec (docs/bundle-format.md) against the code: its test vectors, its graph tables,
every bundle carrying it, every file listed, no build metadata, one word list, the version check."""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tr0n_rt import noise
from tr0n_rt.bundle import SCHEMA_VERSION, SPEC_FILE, load_bundle
from tr0n_rt.errors import BundleError, BundleVersionError
from tr0n_rt.graphs import pipeline_graphs
from tr0n_rt.paths import world_dir
from tr0n_rt.tokenizer import tokenizer_from_dict

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "docs" / "bundle-format.md"
WORLDS = ("shapes", "digits")


def vectors() -> list[str]:
    text = SPEC.read_text()
    block = re.search(r"```test-vectors\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def reference_client():
    spec = importlib.util.spec_from_file_location("reference_client", ROOT / "examples" / "reference_client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fields(line: str) -> tuple[str, dict, list[str]]:
    head, out = line.split(" -> ")
    kind, *args = head.split()
    named = dict(a.split("=", 1) for a in args if "=" in a)
    return kind, named if named else {"x": args[0]}, out.split(",")


def test_spec_test_vectors_hold_for_the_runtime_and_the_reference_client():
    client = reference_client()
    checked = set()
    for line in vectors():
        kind, a, want = fields(line)
        checked.add(kind)
        if kind == "philox":
            ctr = np.array([int(w, 16) for w in a["counter"].split(",")], np.uint32)
            key = np.array([int(w, 16) for w in a["key"].split(",")], np.uint32)
            expected = [int(w, 16) for w in want]
            assert noise.philox4x32(ctr, key).tolist() == expected, line
            assert client.philox(ctr.astype(np.uint64), key.astype(np.uint64)).tolist() == expected, line
            continue
        if kind in ("words", "uniform", "normal"):
            seeds, s, t, n = [int(a["seed"])], int(a["stream"]), int(a["step"]), int(a["n"])
            if kind == "words":
                expected = [int(w, 16) for w in want]
                assert noise.words(noise.check_seeds(seeds), s, t, n)[0].tolist() == expected, line
                assert client.draw_words(seeds, s, t, n)[0].tolist() == expected, line
                continue
            expected = [float.fromhex(w) for w in want]
            ours = getattr(noise, kind)(noise.check_seeds(seeds), s, t, (n,))[0]
            theirs = (client.uniforms if kind == "uniform" else client.normals)(seeds, s, t, (n,))[0]
            assert ours.dtype == theirs.dtype == np.float32
            assert ours.tolist() == theirs.tolist() == expected, line
            continue
        if kind == "mix":
            logits = np.array([float(v) for v in a["logits"].split(",")], np.float32)[None, :, None]
            means = np.array([float(v) for v in a["means"].split(",")], np.float32)[None, :, None]
            assert noise.mix(logits, means)[0, 0] == np.float32(float.fromhex(want[0])), line
            w = client.softmax64(logits, 1)
            assert np.float32((w[0, 0] * means[0, 0] + w[0, 1] * means[0, 1]) + w[0, 2] * means[0, 2]) == \
                np.float32(float.fromhex(want[0]))
            continue
        x, expected = np.array([float.fromhex(a["x"])]), float.fromhex(want[0])
        ours = {"ndtri": noise.ndtri, "log": noise.log, "exp": noise.exp}[kind](x)[0]
        assert ours == expected, f"{line}: got {float(ours).hex()}"
        if kind != "ndtri":
            assert {"log": client.log64, "exp": client.exp64}[kind](x)[0] == expected, line
    assert checked == {"philox", "words", "uniform", "normal", "ndtri", "log", "exp", "mix"}


def test_normals_are_standard_normal_and_uniforms_uniform():
    seeds = noise.check_seeds(range(64))
    z = noise.normal(seeds, noise.SGLD, 0, (4096,)).ravel()
    assert abs(z.mean()) < 5e-3 and abs(z.std() - 1) < 5e-3
    assert abs(np.mean(np.abs(z) > 1.959964) - 0.05) < 2e-3  # the tails too (they go through log)
    u = noise.uniform(seeds, noise.AUGMENT, 0, (4096,)).ravel()
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 3e-3
    np.testing.assert_allclose(noise.ndtri(np.array([0.975, 0.025, 1e-9])), [1.959963984540054, -1.959963984540054,
                                                                              -5.997807015007686], rtol=1e-14)


def test_spec_documents_every_graph_tensor_and_hyperparameter():
    text = SPEC.read_text()
    section = text[text.index("## 3. Graphs"):text.index("## 4. Conditions")]
    for spec in pipeline_graphs("text", image_input=True, image_translator=True, aesthetic=True):
        assert f"`{spec.name}`" in section, spec.name
        for name in spec.inputs + spec.outputs:
            base = name.removesuffix("_next")
            assert f"`{base}`" in section, f"{spec.name}.{name} is not documented in {SPEC.name}"


@pytest.mark.parametrize("world", WORLDS)
def test_every_bundle_carries_the_spec_and_lists_every_file(world):
    folder = world_dir(world)
    b = load_bundle(folder)
    m = b.manifest
    assert m["schema_version"] == SCHEMA_VERSION and m["spec"] == {"file": SPEC_FILE, "version": SCHEMA_VERSION}
    assert (folder / SPEC_FILE).read_bytes() == SPEC.read_bytes(), \
        f"{world}'s {SPEC_FILE} is older than docs/bundle-format.md: re-export it (tr0n-rt export --world {world})"
    on_disk = {f.name for f in folder.iterdir() if f.is_file() and f.name != "manifest.json"}
    assert on_disk == set(m["files"]) | set(m["sources"]), "unlisted: " + ", ".join(on_disk - set(m["files"]) - set(m["sources"]))
    assert not set(m["files"]) & set(m["sources"])
    assert m["noise"] == {"scheme": "philox4x32-10", "version": noise.VERSION}
    assert set(m["graphs"]["step"]["inputs"]) >= {"latent_lr", "momentum", "noise_std", "logits_lr", "clip_norm",
                                                  "adam_eps"}


@pytest.mark.parametrize("world", WORLDS)
def test_shipped_graphs_carry_no_build_paths_or_stack_traces(world):
    pytest.importorskip("onnx")
    from tr0n_rt.export.clean import build_leaks

    graphs = sorted(world_dir(world).glob("*.onnx"))
    assert len(graphs) >= 9
    leaks = {g.name: build_leaks(g)[:2] for g in graphs if build_leaks(g)}
    assert not leaks, leaks


def test_build_leaks_finds_what_torch_onnx_records(tmp_path):
    onnx = pytest.importorskip("onnx")
    from tr0n_rt.export.clean import build_leaks, strip_build_metadata

    model = onnx.load(str(world_dir("digits") / "translator.onnx"))
    node = model.graph.node[0]
    node.doc_string = 'Traceback (most recent call last):\n  File "/home/someone/x.py", line 1'
    node.metadata_props.add(key="pkg.torch.onnx.stack_trace", value="/work/main/export/graphs.py:40")
    onnx.save(model, str(tmp_path / "leaky.onnx"))
    assert len(build_leaks(tmp_path / "leaky.onnx")) == 2
    assert strip_build_metadata(model) == 2
    onnx.save(model, str(tmp_path / "clean.onnx"))
    assert build_leaks(tmp_path / "clean.onnx") == []


def test_one_word_list_for_tokenizer_and_judge():
    m = load_bundle(world_dir("shapes"), verify=False).manifest
    tok = tokenizer_from_dict(m["tokenizer"])
    assert m["judge"]["rule"] == {"kind": "words", "words": "tokenizer", "needs_any": ["shape", "colour"]}
    assert tok.words("A GREY square on a Grey background") == ["a", "gray", "square", "on", "a", "gray", "background"]
    gray = tok.encode("gray")[0]
    assert tok.encode("grey") == [gray] and gray != tok.unk_token_id
    judge_words = {w for values in m["judge"]["heads"].values() for w in values}
    assert judge_words <= set(tok.vocab), judge_words - set(tok.vocab)


def test_a_version_1_bundle_gets_a_typed_error_that_says_how_to_re_export(tmp_path):
    bundle = tmp_path / "old"
    shutil.copytree(world_dir("digits"), bundle)
    m = json.loads((bundle / "manifest.json").read_text())
    m["schema_version"] = 1
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleVersionError, match=r"version 1, and this tr0n-rt reads version 2: re-export it .*"
                                                 r"tr0n-rt export --pipeline PIPELINE_DIR --out"):
        load_bundle(bundle)
    m["schema_version"] = 3
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleVersionError, match="upgrade tr0n-rt"):
        load_bundle(bundle)


def test_a_changed_pipeline_source_fails_the_bundle_check(tmp_path):
    bundle = tmp_path / "digits"
    shutil.copytree(world_dir("digits"), bundle)
    with open(bundle / "translator.safetensors", "ab") as f:  # a retrained translator, not yet exported
        f.write(b"\0")
    with pytest.raises(BundleError, match="translator.safetensors has .* bytes, the manifest says"):
        load_bundle(bundle)


def test_a_clip_tokenizer_ships_its_bpe_file_in_the_bundle(tmp_path):
    pytest.importorskip("onnx")
    from tr0n_rt.bundle import file_entry
    from tr0n_rt.export.bundle_export import _stage_companions
    from tr0n_rt.tokenizer import BPE_FILENAME, CLIPTokenizer

    class Pipeline:
        spec = {"tokenizer": {"kind": "clip_bpe", "context_length": 77}}

    stage, files = tmp_path / "stage", {}
    stage.mkdir()
    entry = _stage_companions(Pipeline, stage, files)
    assert entry == {"kind": "clip_bpe", "context_length": 77, "bpe_file": BPE_FILENAME}
    assert set(files) == {SPEC_FILE, BPE_FILENAME}
    assert files[BPE_FILENAME] == file_entry(Path(CLIPTokenizer().bpe_path))
    # the reader hands the runtime tokenizer the bundle's own (verified) copy
    bundle = tmp_path / "b"
    shutil.copytree(world_dir("shapes"), bundle)
    shutil.copy(stage / BPE_FILENAME, bundle / BPE_FILENAME)
    m = json.loads((bundle / "manifest.json").read_text())
    m["tokenizer"], m["files"][BPE_FILENAME] = entry, files[BPE_FILENAME]
    (bundle / "manifest.json").write_text(json.dumps(m))
    info = load_bundle(bundle).info
    assert info.tokenizer == {"kind": "clip_bpe", "context_length": 77, "bpe_path": str((bundle / BPE_FILENAME).resolve())}
    assert tokenizer_from_dict(info.tokenizer)(["a red star"]).shape == (1, 77)
    del m["files"][BPE_FILENAME]
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="tokenizer.bpe_file .* listed in field 'files'"):
        load_bundle(bundle)
