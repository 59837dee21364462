"""Property-based fuzzing of everything a careless or hostile user hands tr0n-rt: manifests, pipeline.json,
prompts, CLI numbers, images and output paths. The property is always the same: success, or one of the
project's typed errors (tr0n_rt.errors.Tr0nError; argparse's usage exit for the command line), never
another exception, a hang, or a write outside what was asked.

Examples are derandomized (the same every run, so CI is reproducible) and bounded in number; the whole
file takes about a minute on two cores. Raise FUZZ_EXAMPLES to search longer.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402

from tr0n_rt.bundle import load_bundle  # noqa: E402
from tr0n_rt.errors import Tr0nError  # noqa: E402
from tr0n_rt.paths import world_dir  # noqa: E402

SCALE = int(os.environ.get("FUZZ_EXAMPLES", "1"))


def fuzz(n: int):
    return settings(max_examples=n * SCALE, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


# --- JSON values, hostile ones included -----------------------------------------------------------------
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
                    st.sampled_from([0, -1, 1, 2**31, 2**63, 10**30]),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["", "../x", "/etc/passwd", "a" * 300, "batch", "float32"]))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)


def paths_of(obj, prefix=()):
    """Every path (tuple of keys / indices) into a JSON value."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from paths_of(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from paths_of(v, prefix + (i,))


def replaced(obj, path, value):
    if not path:
        return value
    out = obj.copy()
    out[path[0]] = replaced(obj[path[0]], path[1:], value)
    return out


def deleted(obj, path):
    out = obj.copy()
    if len(path) == 1:
        del out[path[0]]
    else:
        out[path[0]] = deleted(obj[path[0]], path[1:])
    return out


@pytest.fixture(scope="module")
def bundle_copy(tmp_path_factory):
    """A copy of the digits bundle whose manifest.json each example rewrites."""
    folder = tmp_path_factory.mktemp("fuzz") / "digits"
    shutil.copytree(world_dir("digits"), folder)
    return folder


DIGITS_MANIFEST = json.loads((world_dir("digits") / "manifest.json").read_text())
MANIFEST_PATHS = [p for p in paths_of(DIGITS_MANIFEST) if p and p[0] not in ("export",)]


def load_and_use(folder: Path) -> None:
    """What the runtime does with a manifest before running graphs: load, verify, read the judge entry."""
    from tr0n_rt.judge import RuntimeJudge

    b = load_bundle(folder)
    b.graph_file("translator")
    RuntimeJudge.from_manifest(folder, b.manifest)


@fuzz(120)
@given(data=st.data())
def test_fuzzed_manifests_load_or_raise_a_bundle_error(bundle_copy, data):
    path = data.draw(st.sampled_from(MANIFEST_PATHS), label="path")
    action = data.draw(st.sampled_from(["replace", "delete"]), label="action")
    if action == "delete" and isinstance(path[-1], str):
        manifest = deleted(DIGITS_MANIFEST, path)
    else:
        manifest = replaced(DIGITS_MANIFEST, path, data.draw(json_values, label="value"))
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    try:
        load_and_use(bundle_copy)
    except Tr0nError:
        pass


@fuzz(20)
@given(raw=st.one_of(st.binary(max_size=200), st.integers(1, 200_000).map(lambda n: "[" * n + "]" * n),
                     st.integers(1, 200_000).map(lambda n: '{"a":' * n + "1" + "}" * n),
                     st.just('{"format": "tr0n-rt.bundle", "schema_version": 1e999}'),
                     st.just('{"format": "tr0n-rt.bundle", "schema_version": ' + "9" * 5000 + "}")))
def test_raw_manifest_bytes_load_or_raise_a_bundle_error(bundle_copy, raw):
    (bundle_copy / "manifest.json").write_bytes(raw if isinstance(raw, bytes) else raw.encode())
    try:
        load_and_use(bundle_copy)
    except Tr0nError:
        pass


# --- pipeline.json ---------------------------------------------------------------------------------------
SHAPES_PIPELINE = json.loads((world_dir("shapes") / "pipeline.json").read_text())
PIPELINE_PATHS = [p for p in paths_of(SHAPES_PIPELINE) if p]


@pytest.fixture(scope="module")
def pipeline_copy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz") / "shapes"
    shutil.copytree(world_dir("shapes"), folder)
    (folder / "manifest.json").unlink()  # a pipeline folder, not a bundle: the judge comes from pipeline.json
    return folder


@fuzz(60)
@given(data=st.data())
def test_fuzzed_pipeline_json_reads_or_raises_a_typed_error(pipeline_copy, data):
    from tr0n_rt.info import describe
    from tr0n_rt.pipeline_json import read_pipeline_json

    path = data.draw(st.sampled_from(PIPELINE_PATHS), label="path")
    spec = replaced(SHAPES_PIPELINE, path, data.draw(json_values, label="value"))
    (pipeline_copy / "pipeline.json").write_text(json.dumps(spec))
    for read in (read_pipeline_json, describe):
        try:
            read(pipeline_copy)
        except Tr0nError:
            pass


# --- prompts ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes_sampler():
    from tr0n_rt.sampler import Sampler

    return Sampler.open("shapes", backend="onnxruntime", preset="fast")


prompts = st.one_of(st.text(max_size=40), st.text(st.characters(codec="utf-8"), min_size=1, max_size=2000),
                    st.sampled_from(["", " ", "\x00", "grey", "<start_of_text>", "a" * 10_000, "🙂" * 50]))


@fuzz(80)
@given(batch=st.lists(prompts, min_size=1, max_size=4))
def test_fuzzed_prompts_tokenize_encode_or_raise_a_prompt_error(shapes_sampler, batch):
    from tr0n_rt.tokenizer import CLIPTokenizer

    try:
        c = shapes_sampler.conditions(batch)
        assert c.shape == (len(batch), shapes_sampler.info.cond_dim) and np.isfinite(c).all()
    except Tr0nError:
        pass
    ids = CLIPTokenizer(context_length=77)(batch)  # the BPE accepts anything, empty included
    assert ids.shape == (len(batch), 77) and ids.dtype == np.int64


# --- CLI numbers -----------------------------------------------------------------------------------------
NUMBER_OPTIONS = ["--steps", "--copies", "--samples", "--seed", "--batch", "--threads", "--latent-lr", "--momentum",
                  "--noise-std", "--logits-lr", "--aesthetic-weight", "--interpolate"]
numbers = st.one_of(st.integers(-(2**80), 2**80).map(str), st.floats().map(repr),
                    st.sampled_from(["nan", "inf", "-inf", "1e400", "2**70", "0x10", "", " 3", "1_000", "٣"]),
                    st.text(max_size=6))


@fuzz(150)
@given(option=st.sampled_from(NUMBER_OPTIONS), value=numbers)
def test_fuzzed_cli_numbers_parse_within_bounds_or_exit_with_usage(option, value, capsys):
    from tr0n_rt.cli import build_parser

    try:
        args = build_parser().parse_args(["sample", "a star", option, value])
    except SystemExit as e:
        assert e.code == 2
        err = capsys.readouterr().err
        assert "usage:" in err and len(err) < 5000
        return
    parsed = getattr(args, option.lstrip("-").replace("-", "_"))
    if isinstance(parsed, int):
        assert abs(parsed) <= 2**64
    elif isinstance(parsed, float):
        assert np.isfinite(parsed)


def run_cli(argv: list[str], capsys) -> None:
    """tr0n-rt with argv: exit 0 (done), 1 (a typed error, one line) or 2 (usage), never a traceback."""
    from tr0n_rt.cli import main

    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    assert code in (0, 1, 2)
    assert "Traceback" not in capsys.readouterr().err


@fuzz(40)
@given(option=st.sampled_from(["--steps", "--copies", "--samples", "--latent-lr", "--noise-std"]), value=numbers)
def test_fuzzed_sampling_numbers_run_or_raise_a_typed_error(option, value, tmp_path_factory, capsys):
    """Past the parser: the run itself (T = 0 or 1 keeps it short) ends in success or a one-line error."""
    out = tmp_path_factory.mktemp("run")
    argv = ["sample", "--world", "digits", "3", "--no-judge", "--out", str(out / "o"), option, value]
    if option != "--steps":
        argv += ["--steps", "1"]
    run_cli(argv, capsys)


# --- images ----------------------------------------------------------------------------------------------
MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I", "I;16", "F", "YCbCr"]


@fuzz(60)
@given(mode=st.sampled_from(MODES), width=st.integers(1, 300), height=st.integers(1, 300),
       fmt=st.sampled_from(["PNG", "TIFF", "BMP", "GIF", "WEBP"]), seed=st.integers(0, 2**31))
def test_fuzzed_images_become_pixels_in_range_or_a_prompt_error(tmp_path_factory, mode, width, height, fmt, seed):
    from tr0n_rt.images import clip_pixels

    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    try:
        image = rgb.convert(mode)
        buf = io.BytesIO()
        image.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):  # Pillow cannot write this mode in this format: nothing to test
        return
    f = tmp_path_factory.mktemp("img") / f"x.{fmt.lower()}"
    f.write_bytes(buf.getvalue())
    try:
        x = clip_pixels(f, 32)
    except Tr0nError:
        return
    assert x.shape == (3, 32, 32) and x.dtype == np.float32 and np.isfinite(x).all()
    assert 0.0 <= x.min() and x.max() <= 1.0


@fuzz(40)
@given(raw=st.binary(max_size=300), header=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"II*\x00"]))
def test_fuzzed_image_bytes_are_refused_with_a_prompt_error(tmp_path_factory, raw, header):
    from tr0n_rt.images import clip_pixels

    f = tmp_path_factory.mktemp("img") / "x.png"
    f.write_bytes(header + raw)
    try:
        clip_pixels(f, 32)
    except Tr0nError:
        pass


# --- where a run writes ----------------------------------------------------------------------------------
TARGETS = ["fresh/out", "file.txt", "fifo", "link_to_outside", "bundle", "bundle/manifest.json", "out/000.png",
           "out/grid.png", "out", "dir", "dir/../dir/x.json", "link_dir/x.json"]


@fuzz(30)
@given(out=st.sampled_from(TARGETS), json_target=st.one_of(st.none(), st.sampled_from(TARGETS)))
def test_fuzzed_output_paths_never_write_outside_or_over_what_they_must_not(tmp_path_factory, out, json_target, capsys):
    root = tmp_path_factory.mktemp("sandbox")
    box, outside = root / "box", root / "outside_dir"
    box.mkdir()
    outside.mkdir()
    sentinel = outside / "keep.txt"
    sentinel.write_text("keep")
    (box / "file.txt").write_text("user data")
    os.mkfifo(box / "fifo")
    os.symlink(sentinel, box / "link_to_outside")
    (box / "dir").mkdir()
    shutil.copytree(world_dir("digits"), box / "bundle")
    os.symlink(box / "dir", box / "link_dir")
    before = {p: p.read_bytes() for p in (box / "bundle").iterdir()}
    argv = ["sample", "--pipeline", str(box / "bundle"), "3", "--steps", "0", "--no-judge", "--out", str(box / out)]
    if json_target is not None:
        argv += ["--json", str(box / json_target)]
    run_cli(argv, capsys)
    assert sentinel.read_text() == "keep" and [p.name for p in outside.iterdir()] == ["keep.txt"]
    assert stat.S_ISFIFO(os.lstat(box / "fifo").st_mode) and os.path.islink(box / "link_to_outside")
    assert {p: p.read_bytes() for p in (box / "bundle").iterdir()} == before
    assert (box / "file.txt").read_text() == "user data"
