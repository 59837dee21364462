"""examples/cpp: the C++ client of the bundle format (ONNX Runtime's C++ API) reproduces `tr0n-rt sample`
bit for bit (the same PNG pixels, the same float32 energies) on both embedded worlds, fp32 and FP16; it
checks every listed file's size and sha256 with its own SHA-256 (checked here against hashlib), and its
noise and float64 arithmetic match tr0n_rt.noise and the spec's test vectors; sample mode's candidates and
start noise (spec section 6, step 1) included.

The client is built once per module by examples/cpp/build.sh, which downloads ONNX Runtime's headers from
npm (150 MB; TR0N_CPP_DOWNLOADS=DIR keeps the tarball between runs) and needs g++."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tr0n_rt import noise
from tr0n_rt.cli import main as tr0n_main
from tr0n_rt.paths import world_dir

ROOT = Path(__file__).resolve().parents[1]
CPP = ROOT / "examples" / "cpp"
SPEC = ROOT / "docs" / "bundle-format.md"
TARBALL = "com.github.asus4.onnxruntime-0.4.9.tgz"

CASES = {
    "shapes-fp32": ("shapes", ["a red star", "a green star on a grey background", "a blue circle"],
                    ["--samples", "2", "--seed", "5", "--batch", "4"]),
    "shapes-fp16-sample-mode": ("shapes", ["a blue circle on a white background", "a yellow triangle"],
                                ["--precision", "fp16", "--mode", "sample", "--steps", "6"]),
    "digits-fp32": ("digits", ["3", "digit 7"], ["--samples", "2"]),  # the worlds' default: sample mode, 2 candidates
    "shapes-fp32-mixture": ("shapes", ["a red star", "a circle"], ["--mode", "mixture", "--steps", "5", "--seed", "9"]),
    "digits-fp16-no-copies": ("digits", ["0", "9"], ["--precision", "fp16", "--copies", "0", "--steps", "4"]),
    # the chunked step: 8 copies in chunks of 3, 3 and 2 (docs/bundle-format.md, "The chunked step")
    "digits-fp32-chunked": ("digits", ["2", "6"], ["--copies", "8", "--steps", "4", "--chunk", "3", "--seed", "4"]),
    # sample mode's start: 3 candidates with start noise, scored by the energy graph (chunked: in chunks of 3)
    "shapes-fp32-candidates": ("shapes", ["a red star", "a blue circle"],
                               ["--mode", "sample", "--steps", "4", "--candidates", "3", "--start-noise", "0.3",
                                "--samples", "2", "--seed", "7"]),
    "shapes-fp32-candidates-chunked": ("shapes", ["a green square", "a yellow triangle on a white background"],
                                       ["--mode", "sample", "--copies", "8", "--steps", "3", "--chunk", "3",
                                        "--candidates", "3", "--start-noise", "0.3", "--seed", "4"]),
}


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Path:
    """BUILD/tr0n_client, built by examples/cpp/build.sh with this interpreter's onnxruntime and nlohmann-json."""
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip(f"the C++ client needs a C++17 compiler: {os.environ.get('CXX', 'g++')} is not on PATH")
    cached = Path(os.environ.get("TR0N_CPP_DOWNLOADS", "/nonexistent")) / TARBALL
    if shutil.which("npm") is None and not cached.is_file():
        pytest.skip("building the C++ client downloads ONNX Runtime's headers with npm, which is not on PATH "
                    "(or set TR0N_CPP_DOWNLOADS to a folder holding " + TARBALL + ")")
    build = tmp_path_factory.mktemp("cpp_build")
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(CPP / "build.sh"), str(build)], env=env, capture_output=True, text=True,
                          timeout=1800, check=False)
    assert done.returncode == 0, f"examples/cpp/build.sh failed:\n{done.stdout}\n{done.stderr}"
    return build / "tr0n_client"


def run(client: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(client), *args], capture_output=True, text=True, input=stdin, timeout=600, check=False)


def records(path: Path) -> list[tuple[str, int, np.ndarray, float | None]]:
    """(query, seed, RGB pixels, energy) of each image of a samples.json or client.json."""
    out = []
    for r in json.loads(path.read_text())["images"]:
        query = r.get("query", r.get("prompt", r.get("class")))
        pixels = np.asarray(Image.open(path.parent / Path(r["file"]).name).convert("RGB"))
        out.append((query, r["seed"], pixels, r["energy"]))
    return out


def no_energy(e) -> bool:  # samples.json and this client write null, the Python reference client NaN
    return e is None or (isinstance(e, float) and np.isnan(e))


def assert_same(ours: list, theirs: list, count: int):
    assert len(ours) == len(theirs) == count
    for i, ((qa, sa, a, ea), (qb, sb, b, eb)) in enumerate(zip(ours, theirs)):
        assert (qa, sa) == (qb, sb), f"image {i}: {(qa, sa)} != {(qb, sb)}"
        assert a.shape == b.shape and np.array_equal(a, b), \
            f"image {i}: {np.abs(a.astype(int) - b).max() if a.shape == b.shape else a.shape} levels apart"
        assert ea == eb or (no_energy(ea) and no_energy(eb)), f"image {i}: energy {ea!r} != {eb!r}"
        if not no_energy(ea):
            assert np.float32(ea) == np.float32(eb)


# --- sampling, against tr0n-rt ---------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_cpp_client_reproduces_tr0n_rt_sample_bit_for_bit(client, case, tmp_path):
    world, queries, options = CASES[case]
    assert tr0n_main(["sample", "--world", world, *queries, *options, "--no-judge", "--out", str(tmp_path / "rt")]) == 0
    done = run(client, str(world_dir(world)), *queries, *options, "--out", str(tmp_path / "cpp"))
    assert done.returncode == 0, done.stderr
    samples = int(options[options.index("--samples") + 1]) if "--samples" in options else 1
    assert_same(records(tmp_path / "rt" / "samples.json"), records(tmp_path / "cpp" / "client.json"),
                len(queries) * samples)


# --- what tr0n-rt sample has no flag for, against examples/reference_client.py ---------------------------
def bundle_with(tmp_path: Path, world: str, **sampling) -> Path:
    """A bundle that is `world` with manifest fields sampling.* replaced (its files linked, not copied)."""
    folder = tmp_path / f"{world}-{'-'.join(f'{k}{v}' for k, v in sampling.items())}"
    folder.mkdir()
    src = world_dir(world)
    for f in src.iterdir():
        if f.is_file() and f.name != "manifest.json":
            (folder / f.name).symlink_to(f)
    m = json.loads((src / "manifest.json").read_text())
    m["sampling"].update(sampling)
    (folder / "manifest.json").write_text(json.dumps(m, indent=2))
    return folder


def reference_client():
    spec = importlib.util.spec_from_file_location("reference_client", ROOT / "examples" / "reference_client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("world, sampling, options", [
    ("digits", {"init": "prior", "steps": 3, "copies": 2}, ["--samples", "2", "--seed", "9"]),
    ("digits", {"steps": 0}, ["--samples", "2"]),  # mixture, T = 0: the most likely mean, no energy
    ("shapes", {"mode": "sample", "steps": 0}, ["--precision", "fp16"]),
    # the manifest's candidates and start_noise (no flags); T = 0 still scores the candidates
    ("shapes", {"mode": "sample", "steps": 0, "candidates": 4, "start_noise": 0.5}, ["--samples", "2", "--seed", "3"]),
], ids=["prior-init", "mixture-no-steps", "sample-mode-no-steps", "sample-mode-manifest-candidates"])
def test_cpp_client_matches_the_reference_client(client, tmp_path, world, sampling, options):
    bundle = bundle_with(tmp_path, world, **sampling)
    queries = ["3", "8"] if world == "digits" else ["a red square", "something purple"]
    assert reference_client().main([str(bundle), *queries, *options, "--out", str(tmp_path / "py")]) == 0
    done = run(client, str(bundle), *queries, *options, "--out", str(tmp_path / "cpp"))
    assert done.returncode == 0, done.stderr
    samples = int(options[options.index("--samples") + 1]) if "--samples" in options else 1
    assert_same(records(tmp_path / "py" / "client.json"), records(tmp_path / "cpp" / "client.json"),
                len(queries) * samples)


# --- refusals -------------------------------------------------------------------------------------------
def test_cpp_client_refuses_a_modified_bundle(client, tmp_path):
    bundle = tmp_path / "digits"
    shutil.copytree(world_dir("digits"), bundle)
    data = bytearray((bundle / "translator.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (bundle / "translator.onnx").write_bytes(bytes(data))
    done = run(client, str(bundle), "3", "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "translator.onnx does not match its sha256" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()
    (bundle / "judge.onnx").unlink()  # a listed file missing: refused too, by name
    done = run(client, str(bundle), "3", "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "judge.onnx" in done.stderr, done.stderr


def test_cpp_client_refuses_what_it_leaves_out(client, tmp_path):
    bundle = bundle_with(tmp_path, "shapes")
    done = run(client, str(bundle), "une étoile rouge", "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "ASCII" in done.stderr, done.stderr
    m = json.loads((bundle / "manifest.json").read_text())
    m["tokenizer"] = {"kind": "clip_bpe", "context_length": 16, "bpe_file": "bpe_simple_vocab_16e6.txt.gz"}
    (bundle / "manifest.json").write_text(json.dumps(m))
    done = run(client, str(bundle), "a red star", "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "clip_bpe" in done.stderr, done.stderr
    m["schema_version"] = 1
    (bundle / "manifest.json").write_text(json.dumps(m))
    done = run(client, str(bundle), "a red star", "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "not a version 2 tr0n-rt bundle" in done.stderr, done.stderr


@pytest.mark.parametrize("options, message", [
    (["--candidates", "0"], "--candidates must be a whole number from 1 to 64"),
    (["--candidates", "65"], "--candidates must be a whole number from 1 to 64"),
    (["--candidates", "-2"], "--candidates must be a whole number from 1 to 64"),
    (["--start-noise", "-0.5"], "--start-noise must be a number from 0 to 100"),
    (["--start-noise", "nan"], "--start-noise must be a number from 0 to 100"),
    (["--start-noise", "101"], "--start-noise must be a number from 0 to 100"),
])
def test_cpp_client_refuses_out_of_range_start_settings(client, tmp_path, options, message):
    done = run(client, str(world_dir("shapes")), "a red star", *options, "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("sampling, message", [
    ({"candidates": 65}, "sampling.candidates must be a whole number from 1 to 64"),
    ({"candidates": 2.5}, "sampling.candidates must be a whole number from 1 to 64"),
    ({"start_noise": -1}, "sampling.start_noise must be a number from 0 to 100"),
], ids=["candidates-65", "candidates-2.5", "start-noise-negative"])
def test_cpp_client_refuses_out_of_range_manifest_start_settings(client, tmp_path, sampling, message):
    bundle = bundle_with(tmp_path, "shapes", **sampling)
    done = run(client, str(bundle), "a red star", "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and message in done.stderr, done.stderr


# --- the pieces: SHA-256, noise, float64 arithmetic ------------------------------------------------------
def test_cpp_sha256_matches_hashlib(client, tmp_path):
    messages = [b"", b"abc", b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
                (b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrs"
                 b"mnopqrstnopqrstu")]
    rng = np.random.default_rng(0)
    messages += [rng.integers(0, 256, n, dtype=np.uint8).tobytes()  # around the padding boundaries
                 for n in (1, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000, (1 << 20) + 17)]
    files = []
    for i, data in enumerate(messages):
        files.append(tmp_path / f"m{i}")
        files[-1].write_bytes(data)
    done = run(client, "--sha256", *map(str, files))
    assert done.returncode == 0, done.stderr
    got = [line.split()[0] for line in done.stdout.splitlines()]
    assert got == [hashlib.sha256(m).hexdigest() for m in messages]
    assert got[1] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-4's "abc"


@pytest.mark.parametrize("seed", [0, 7, 1099511627783, (1 << 64) - 1])
def test_cpp_noise_matches_tr0n_rt(client, seed):
    seeds = noise.check_seeds([seed])
    for stream, step in ((noise.SGLD, 0), (noise.INIT, 0), (noise.AUGMENT, 25), (noise.START, 2)):
        for kind in ("normal", "uniform"):
            done = run(client, "--noise", kind, str(seed), str(stream), str(step), "4099")
            assert done.returncode == 0, done.stderr
            got = np.array([int(h, 16) for h in done.stdout.split()], np.uint32).view(np.float32)
            want = getattr(noise, kind)(seeds, stream, step, (4099,))[0]
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (kind, stream, step)


def hex_bits(x: np.ndarray) -> str:
    return "".join(f"{b:016x}\n" for b in np.asarray(x, np.float64).view(np.uint64))


def test_cpp_float64_log_exp_ndtri_match_tr0n_rt(client):
    rng = np.random.default_rng(1)
    w = np.concatenate([np.arange(64), (1 << 32) - 1 - np.arange(64), rng.integers(0, 1 << 32, 20000)])
    p = np.concatenate([(w + 0.5) * 2.0 ** -32,  # every p the noise scheme draws is of this form
                        [1e-300, 1e-100, 1e-20, 1e-12, 0.075, 0.925, 0.5, 0.4999999, 1 - 1e-12]])  # both tails
    inputs = {
        "ndtri": p,
        "log": np.concatenate([p, 10.0 ** rng.uniform(-300, 300, 5000), [1.0, 2.0, 0.5, 0.7071067811865476]]),
        "exp": np.concatenate([-rng.exponential(3.0, 10000), -rng.uniform(0, 745, 2000),
                               [0.0, -708.0, -708.0000001, -0.5, -1e-300]]),
    }
    for kind, x in inputs.items():
        done = run(client, "--math", kind, stdin=hex_bits(x))
        assert done.returncode == 0, done.stderr
        got = np.array([int(h, 16) for h in done.stdout.split()], np.uint64).view(np.float64)
        want = getattr(noise, kind)(x)
        bad = np.flatnonzero(got.view(np.uint64) != want.view(np.uint64))
        assert bad.size == 0, f"{kind}({x[bad[0]]!r}) = {got[bad[0]]!r}, tr0n_rt: {want[bad[0]]!r}"


def test_cpp_client_passes_the_spec_test_vectors(client):
    block = re.search(r"```test-vectors\n(.*?)```", SPEC.read_text(), re.DOTALL)
    if block is None:
        pytest.skip(f"{SPEC} has no test-vectors block")
    kinds = set()
    for line in filter(str.strip, block.group(1).splitlines()):
        head, out = line.split(" -> ")
        kind, *args = head.split()
        kinds.add(kind)
        a = dict(x.split("=", 1) for x in args if "=" in x)
        want = out.split(",")
        if kind == "philox":
            done = run(client, "--philox", *a["counter"].split(","), *a["key"].split(","))
            assert done.stdout.strip() == out, line
        elif kind in ("words", "uniform", "normal"):
            done = run(client, "--noise", kind, a["seed"], a["stream"], a["step"], a["n"])
            got = done.stdout.split()
            if kind == "words":
                assert got == want, line
            else:
                assert [struct.unpack(">f", bytes.fromhex(h))[0] for h in got] == [float.fromhex(v) for v in want], line
        elif kind == "mix":
            done = run(client, "--mix", a["logits"], a["means"])
            assert struct.unpack(">f", bytes.fromhex(done.stdout.strip()))[0] == float.fromhex(want[0]), line
        else:
            done = run(client, "--math", kind, stdin=hex_bits([float.fromhex(args[0])]))
            got = struct.unpack(">d", bytes.fromhex(done.stdout.strip()))[0]
            assert got == float.fromhex(want[0]), f"{line}: got {got.hex()}"
        assert done.returncode == 0, done.stderr
    assert kinds >= {"philox", "words", "uniform", "normal", "ndtri", "log", "exp", "mix"}
