"""The world judges without torch: judge.onnx plus the manifest's rule give the torch judges' verdicts.

Each world's shipped judge is exported into a temporary bundle; the runtime judge must agree with the
torch judge on every verdict (same keys, same `correct`) on random images and on the world's real
images, and must run in a process where torch cannot be imported.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from tr0n_rt.bundle import SCHEMA_VERSION, SPEC_FILE, file_entry  # noqa: E402
from tr0n_rt.errors import BundleError, PromptError, ShapeError  # noqa: E402
from tr0n_rt.export.judge_export import JUDGE_FILE, export_judge  # noqa: E402
from tr0n_rt.export.worlds import judge_from_spec  # noqa: E402
from tr0n_rt.export.worlds.shapes import data as shapes_data  # noqa: E402
from tr0n_rt.export.worlds.shapes.judge import JudgeNet as ShapesJudgeNet  # noqa: E402
from tr0n_rt.judge import RuntimeJudge  # noqa: E402

ENGINES = Path(__file__).resolve().parents[1] / "engines"


def judge_spec(world: str) -> dict:
    """The shipped pipeline's judge spec (shapes: the default net while pipeline.json is being rebuilt)."""
    folder = ENGINES / world
    if not (folder / "judge.safetensors").is_file():
        pytest.skip(f"{folder / 'judge.safetensors'} is not built: run `tr0n-rt train --world {world}`")
    if (folder / "pipeline.json").is_file():
        return json.loads((folder / "pipeline.json").read_text())["judge"]
    return {"family": "shapes_judge", "config": ShapesJudgeNet().config(), "weights": "judge.safetensors"}


def write_manifest(folder: Path, condition: str, judge: dict | None, files: dict, tokenizer: dict | None = None) -> None:
    """A format-2 manifest that load_bundle(verify=False) accepts (schema and contract); its graphs are
    declared by the contract but absent, since only the judge is used here. `judge` and `files` are what
    export_bundle adds for it."""
    from tr0n_rt.graphs import pipeline_graphs
    from tr0n_rt.settings import SamplingConfig

    context = (tokenizer or {}).get("context_length", 16)
    sizes = {"cond_dim": 10, "latent_dim": 8, "context": context, "pixel_size": 32, "channels": 1, "size": 32}

    def tensors(specs):
        return {t.name: {"dtype": t.dtype, "shape": [sizes.get(a, a) for a in t.shape]} for t in specs}

    graphs = {s.name: {"files": {"fp32": f"{s.name}.onnx"}, "inputs": tensors(s.inputs_),
                       "outputs": tensors(s.outputs_)} for s in pipeline_graphs(condition)}
    manifest = {
        "format": "tr0n-rt.bundle", "schema_version": SCHEMA_VERSION, "spec": {"file": SPEC_FILE, "version": SCHEMA_VERSION},
        "name": folder.name,
        "condition": {"kind": condition, "dim": 10, "classes": [str(i) for i in range(10)] if condition == "class" else None},
        "latent": {"dim": 8, "bounds": None}, "mixture": {"components": 1}, "image": {"size": 32, "channels": 1},
        "tokenizer": tokenizer if condition == "text" else None, "image_input": None, "aesthetic": None,
        "augment": {"policy": ["color"], "translation_ratio": 0.125, "resize_range": [0.8, 1.2], "cutout_ratio": 0.5},
        "sampling": SamplingConfig().to_dict(), "noise": {"scheme": "philox4x32-10", "version": 1},
        "graphs": graphs, "judge": judge,
        "onnxruntime": {"graph_optimization_level": "ORT_ENABLE_ALL",
                        "fp16_graphs_on_cpu": {"graph_optimization_level": "ORT_ENABLE_EXTENDED", "why": ""}},
        "files": {**{f: {"sha256": "0" * 64, "bytes": 0} for f in [*(f"{g}.onnx" for g in graphs), SPEC_FILE]}, **files},
        "sources": {}, "export": {},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))


def make_bundle(tmp_path_factory, world: str, condition: str):
    """-> (bundle folder, torch judge, manifest judge entry): the shipped judge exported as export_bundle will."""
    spec = judge_spec(world)
    src = tmp_path_factory.mktemp(f"{world}_pipeline")
    shutil.copy(ENGINES / world / spec["weights"], src / spec["weights"])
    pipeline = ENGINES / world / "pipeline.json"  # a whole pipeline.json: readers check it against its schema
    (src / "pipeline.json").write_text(json.dumps({**(json.loads(pipeline.read_text()) if pipeline.is_file() else {}),
                                                   "judge": spec}))
    out = tmp_path_factory.mktemp(f"{world}_bundle")
    name, entry = export_judge(src, out)
    tokenizer = json.loads((ENGINES / world / "pipeline.json").read_text()).get("tokenizer")
    write_manifest(out, condition, entry, {name: file_entry(out / name)}, tokenizer)
    return out, judge_from_spec(spec, src), entry


@pytest.fixture(scope="module")
def digits_bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory, "digits", "class")


@pytest.fixture(scope="module")
def shapes_bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory, "shapes", "text")


def assert_same_verdicts(runtime: list[dict], torch_: list[dict]) -> None:
    """Same keys, same names and `correct` everywhere; probabilities within float32 noise."""
    assert len(runtime) == len(torch_)
    for r, t in zip(runtime, torch_):
        assert list(r) == list(t)
        for k, v in t.items():
            if isinstance(v, float):
                assert isinstance(r[k], float) and abs(r[k] - v) < 1e-5, (k, r, t)
            else:
                assert r[k] == v and type(r[k]) is type(v), (k, r, t)


# -- export ----------------------------------------------------------------------------------------

def test_export_writes_a_validated_judge_and_its_manifest_entry(digits_bundle, shapes_bundle):
    for folder, judge, entry in (digits_bundle, shapes_bundle):
        assert sorted(p.name for p in folder.iterdir()) == [JUDGE_FILE, "manifest.json"]  # no temporary files
        spec = judge.runtime_spec()
        assert {k: entry[k] for k in spec} == spec and entry["file"] == JUDGE_FILE
        assert entry["validation"]["max_rel_err"] <= 1e-4
    assert list(shapes_bundle[2]["heads"]) == ["shape", "colour", "background"]
    assert digits_bundle[2]["heads"] == {"class": [str(i) for i in range(10)]}


# -- digits: the class rule ------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("3", 3), ("digit 3", 3), ("three", 3), ("Three", 3), (" digit seven ", 7), ("the digit 0", 0), ("nine", 9),
    (5, 5), ("a number 4", 4), ("numeral: 8", 8), ("class 2", 2), ("NUMBER ONE", 1), ("an eight", 8)])
def test_the_bundles_class_rule_reads_class_names(digits_bundle, text, expected):
    """The rule travels as data in the manifest; the torch judge applies the same data."""
    from tr0n_rt.judge import parse_class

    assert RuntimeJudge.from_bundle(digits_bundle[0]).parse_class(text) == expected
    assert parse_class(digits_bundle[1].runtime_spec(), text) == expected


@pytest.mark.parametrize("text", ["ten", "12", "digit", "", "3 apples", "-1", 10, -1, True, "a red star"])
def test_the_bundles_class_rule_rejects_what_is_no_class(digits_bundle, text):
    judge = RuntimeJudge.from_bundle(digits_bundle[0])
    with pytest.raises(PromptError, match="accepted: 0, 1"):
        judge.parse_class(text)
    with pytest.raises(PromptError):
        judge.verdicts(np.zeros((1, 1, 32, 32), np.float32), [text])


def test_digits_verdicts_match_torch_on_the_real_test_split(digits_bundle):
    from tr0n_rt.export.worlds.digits.data import load_split

    folder, torch_judge, _ = digits_bundle
    _, _, x, y = load_split()
    rng = np.random.default_rng(0)
    targets = [str(int(t)) if rng.random() < 0.8 else f"digit {int(rng.integers(10))}" for t in y]  # some wrong
    runtime = RuntimeJudge.from_bundle(folder).verdicts(x.numpy(), targets)
    reference = torch_judge.verdicts(x, targets)
    assert_same_verdicts(runtime, reference)
    accuracy = np.mean([v["correct"] for v in runtime])
    assert accuracy == np.mean([v["correct"] for v in reference]) and 0.6 < accuracy < 0.95


def test_digits_verdicts_match_torch_on_random_images(digits_bundle):
    folder, torch_judge, _ = digits_bundle
    x = np.random.default_rng(1).uniform(-1, 1, (300, 1, 32, 32)).astype(np.float32)  # > one 256-image chunk
    targets = [str(i % 10) for i in range(300)]
    assert_same_verdicts(RuntimeJudge.from_bundle(folder).verdicts(x, targets),
                         torch_judge.verdicts(torch.from_numpy(x), targets))


# -- shapes: the word rule -------------------------------------------------------------------------

def test_word_rule_reads_what_parse_prompt_reads(shapes_bundle):
    judge = RuntimeJudge.from_bundle(shapes_bundle[0])
    rng = np.random.default_rng(0)
    prompts = shapes_data.evaluation_prompts() + [
        shapes_data.caption(a, rng, partial=0.5) for a in shapes_data.sample_attributes(200, rng)] + [
        "A picture of a RED star, on a grey background!", "a circle on a white background", "GREY", "redstar",
        "a red blue circle star on black gray", "something entirely different", "", "ünïcode Circle (grey)",
        "on a white background", "a white circle", "Purple-cross", "a shape",
    ]
    for p in prompts:
        assert judge.parse_prompt(p) == shapes_data.parse_prompt(p), p


def shapes_cases(n: int, seed: int):
    """-> (images [n, 3, 32, 32], prompts): the world's procedural pictures; a third of the prompts
    describe another picture, some name only part of it, a few name neither shape nor colour."""
    rng = np.random.default_rng(seed)
    images, captions, _ = shapes_data.sample_batch(n, rng, partial=0.3)
    prompts = [captions[(i + 1) % n] if i % 3 == 0 else c for i, c in enumerate(captions)]
    prompts[1:n:17] = ["on a gray background"] * len(prompts[1:n:17])
    return images, prompts


def test_shapes_verdicts_match_torch_on_rendered_pictures(shapes_bundle):
    folder, torch_judge, _ = shapes_bundle
    images, prompts = shapes_cases(300, seed=2)
    runtime = RuntimeJudge.from_bundle(folder).verdicts(images.numpy(), prompts)
    reference = torch_judge.verdicts(images, prompts)
    assert_same_verdicts(runtime, reference)
    accuracy = np.mean([v["correct"] for v in runtime])
    assert accuracy == np.mean([v["correct"] for v in reference]) and 0.4 < accuracy < 0.8
    assert not any(v["correct"] for v, p in zip(runtime, prompts) if p == "on a gray background")


def test_shapes_verdicts_match_torch_on_random_images(shapes_bundle):
    folder, torch_judge, _ = shapes_bundle
    x = np.random.default_rng(3).uniform(-1, 1, (64, 3, 32, 32)).astype(np.float32)
    prompts = shapes_data.evaluation_prompts()[:64]
    assert_same_verdicts(RuntimeJudge.from_bundle(folder).verdicts(x, prompts),
                         torch_judge.verdicts(torch.from_numpy(x), prompts))


def test_verdicts_check_image_shapes_and_counts(shapes_bundle):
    judge = RuntimeJudge.from_bundle(shapes_bundle[0])
    with pytest.raises(ShapeError, match=r"\[N, 3, 32, 32\]"):
        judge.verdicts(np.zeros((2, 1, 32, 32), np.float32), ["a red star", "a blue circle"])
    with pytest.raises(ShapeError, match="one query per image"):
        judge.verdicts(np.zeros((2, 3, 32, 32), np.float32), ["a red star"])


# -- loading from a bundle -------------------------------------------------------------------------

def test_bundle_without_a_judge_entry_has_no_judge(tmp_path):
    write_manifest(tmp_path, "class", None, {})
    assert RuntimeJudge.from_bundle(tmp_path) is None


def test_judge_file_must_be_listed_and_unmodified(digits_bundle, tmp_path):
    folder, _, entry = digits_bundle
    shutil.copy(folder / JUDGE_FILE, tmp_path / JUDGE_FILE)
    write_manifest(tmp_path, "class", entry, {})
    with pytest.raises(BundleError, match="not listed"):
        RuntimeJudge.from_bundle(tmp_path)
    listed = file_entry(tmp_path / JUDGE_FILE)
    with open(tmp_path / JUDGE_FILE, "r+b") as f:  # same size, one byte changed
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    write_manifest(tmp_path, "class", entry, {JUDGE_FILE: listed})
    with pytest.raises(BundleError, match="sha256"):
        RuntimeJudge.from_bundle(tmp_path)


def test_judge_entry_is_validated(digits_bundle, tmp_path):
    folder, _, entry = digits_bundle
    shutil.copy(folder / JUDGE_FILE, tmp_path / JUDGE_FILE)
    listed = {JUDGE_FILE: file_entry(tmp_path / JUDGE_FILE)}
    write_manifest(tmp_path, "class", {**entry, "rule": {"kind": "regex"}}, listed)
    with pytest.raises(BundleError, match="field 'judge.rule.kind' is 'regex', expected one of 'words', 'class'"):
        RuntimeJudge.from_bundle(tmp_path)
    two = {"class": ["0", "1"]}, {**entry["rule"], "names": {"zero": 0, "one": 1}}
    write_manifest(tmp_path, "class", {**entry, "heads": two[0], "rule": two[1]}, listed)  # judge.onnx gives 10
    with pytest.raises(BundleError, match="re-export"):
        RuntimeJudge.from_bundle(tmp_path)


# -- the runtime install ---------------------------------------------------------------------------

TORCH_FREE = """
import json, sys

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "open_clip"):
            raise ImportError(f"{name} is blocked: the tr0n-rt runtime must not need it")

sys.meta_path.insert(0, Blocker())
import numpy as np
from tr0n_rt.judge import RuntimeJudge

folder, images, queries, out = sys.argv[1:]
verdicts = RuntimeJudge.from_bundle(folder).verdicts(np.load(images), json.loads(queries))
assert not [m for m in sys.modules if m.split(".")[0] == "torch"]
json.dump(verdicts, open(out, "w"))
"""


@pytest.mark.parametrize("world", ["digits", "shapes"])
def test_runtime_judge_needs_no_torch(world, digits_bundle, shapes_bundle, tmp_path):
    folder, torch_judge, _ = digits_bundle if world == "digits" else shapes_bundle
    if world == "digits":
        images = np.random.default_rng(4).uniform(-1, 1, (6, 1, 32, 32)).astype(np.float32)
        queries = ["3", "digit seven", "nine", "the digit 0", "5", "two"]
    else:
        images, queries = shapes_cases(6, seed=4)
        images = images.numpy()
    np.save(tmp_path / "images.npy", images)
    done = subprocess.run([sys.executable, "-c", TORCH_FREE, str(folder), str(tmp_path / "images.npy"),
                           json.dumps(queries), str(tmp_path / "verdicts.json")],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    reference = json.loads(json.dumps(torch_judge.verdicts(torch.from_numpy(images), queries)))
    assert_same_verdicts(json.loads((tmp_path / "verdicts.json").read_text()), reference)


def test_without_onnxruntime_a_world_is_judged_by_its_torch_judge(monkeypatch):
    """judge.onnx whenever onnxruntime is there (no torch on the sampling path); the export extra alone
    (torch, no onnxruntime) falls back to the judge pipeline.json names."""
    import importlib.util

    from tr0n_rt.export.worlds.shapes.judge import ShapesJudge
    from tr0n_rt.judge import open_judge

    assert isinstance(open_judge(ENGINES / "shapes"), RuntimeJudge)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert isinstance(open_judge(ENGINES / "shapes"), ShapesJudge)
