"""examples/reference_client.py, written from the bundle format spec with numpy and onnxruntime only,
reproduces `tr0n-rt sample` bit for bit: the same PNG pixels and the same final energies, on both
embedded worlds, fp32 and FP16, several queries, seeds, modes and batch splits; and sample mode's
candidates and start noise (docs/bundle-format.md, section 6 step 1)."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tr0n_rt.cli import main as tr0n_main
from tr0n_rt.paths import world_dir
from tr0n_rt.tokenizer import CLIPTokenizer

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "examples" / "reference_client.py"

CASES = {
    "shapes-fp32": ("shapes", ["a red star", "a green star on a grey background", "purple"],
                    ["--samples", "2", "--seed", "5", "--batch", "4"]),
    "shapes-fp16-sample-mode": ("shapes", ["a blue circle on a white background", "a yellow triangle"],
                                ["--precision", "fp16", "--mode", "sample", "--steps", "6", "--seed", "11"]),
    "digits-fp32": ("digits", ["3", "digit 7"], ["--samples", "2", "--seed", "3"]),  # default: sample, 2 candidates
    "digits-fp32-mixture": ("digits", ["1", "5"], ["--mode", "mixture", "--steps", "5", "--seed", "9"]),
    "digits-fp16-no-copies": ("digits", ["0", "9"], ["--precision", "fp16", "--copies", "0", "--steps", "4"]),
    # the chunked step (docs/bundle-format.md, "The chunked step"): 8 copies in chunks of 3, 3 and 2
    "shapes-fp32-chunked": ("shapes", ["a red star", "a blue circle"],
                            ["--copies", "8", "--steps", "5", "--chunk", "3", "--seed", "2"]),
    "digits-fp16-chunked": ("digits", ["4", "8"], ["--precision", "fp16", "--steps", "4", "--chunk", "5"]),
    # sample mode's start: 3 candidates with start noise, scored by the energy graph (chunked: in chunks of 3)
    "shapes-fp32-candidates": ("shapes", ["a red star", "a blue circle"],
                               ["--mode", "sample", "--steps", "4", "--candidates", "3", "--start-noise", "0.3",
                                "--samples", "2", "--seed", "7"]),
    "shapes-fp32-candidates-chunked": ("shapes", ["a green square", "a yellow triangle on a white background"],
                                       ["--mode", "sample", "--copies", "8", "--steps", "3", "--chunk", "3",
                                        "--candidates", "3", "--start-noise", "0.3", "--seed", "4"]),
}


def run_client(args: list[str]) -> subprocess.CompletedProcess:
    """The client in a fresh interpreter that fails if anything imported tr0n_rt."""
    code = ("import runpy, sys; sys.argv = ['reference_client.py'] + sys.argv[1:]\n"
            "try:\n    runpy.run_path(%r, run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    assert not [m for m in sys.modules if m.startswith('tr0n_rt')], 'the client imported tr0n_rt'\n"
            "    raise\n") % str(CLIENT)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)


def records(path: Path) -> list[tuple[np.ndarray, float]]:
    out = []
    for r in json.loads(path.read_text())["images"]:
        out.append((np.asarray(Image.open(path.parent / Path(r["file"]).name).convert("RGB")), r["energy"]))
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_reference_client_reproduces_tr0n_rt_sample_bit_for_bit(case, tmp_path):
    world, queries, options = CASES[case]
    assert tr0n_main(["sample", "--world", world, *queries, *options, "--no-judge", "--out", str(tmp_path / "rt")]) == 0
    done = run_client([str(world_dir(world)), *queries, *options, "--out", str(tmp_path / "client")])
    assert done.returncode == 0, done.stderr
    ours, theirs = records(tmp_path / "rt" / "samples.json"), records(tmp_path / "client" / "client.json")
    assert len(ours) == len(theirs) == len(queries) * (2 if "--samples" in options else 1)
    for i, ((a, ea), (b, eb)) in enumerate(zip(ours, theirs)):
        assert np.array_equal(a, b), f"image {i}: {np.abs(a.astype(int) - b).max()} levels apart"
        assert ea == eb or (np.isnan(ea) and np.isnan(eb)), f"image {i}: energy {ea} != {eb}"


def load_client():
    spec = importlib.util.spec_from_file_location("reference_client", CLIENT)
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)
    return client


@pytest.mark.parametrize("bounds", [None, 0.8])
def test_reference_client_sample_start_matches_tr0n_rt(bounds):
    """Section 6 step 1, sample mode, against tr0n_rt.sampler.sample_start on made-up translator outputs: the
    bounds clamp (no shipped world has bounds), ties (the first) and NaN energies (+inf)."""
    from tr0n_rt import noise
    from tr0n_rt.sampler import sample_start
    from tr0n_rt.settings import SamplingConfig

    rng = np.random.default_rng(3)
    b, k, d = 6, 4, 7
    logits = rng.normal(size=(b, k)).astype(np.float32)
    means = rng.normal(size=(b, k, d)).astype(np.float32)
    std = rng.uniform(0.1, 1.0, d).astype(np.float32)
    seeds = [0, 1, 5, 99, 1 << 40, (1 << 64) - 1]

    def score(z):  # coarse energies (ties between candidates); row 1: the lowest NaN; row 4: every one NaN
        e = np.round(z.sum(1), 0).astype(np.float32)
        e[1] = np.nan if e[1] < -2.5 else e[1]
        e[4] = np.nan
        return e

    client = load_client()
    for candidates, start_noise in ((1, 0.0), (1, 0.3), (5, 0.0), (5, 0.3)):
        cfg = SamplingConfig(mode="sample", candidates=candidates, start_noise=start_noise)
        want = sample_start(cfg, noise.check_seeds(seeds), logits, means, std, bounds, score)
        m = {"latent": {"dim": d, "bounds": bounds}}
        got = client.sample_start(m, seeds, {"candidates": candidates, "start_noise": start_noise}, logits, means,
                                  std, score)
        assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), want.view(np.uint32)), \
            (candidates, start_noise)
        if bounds is not None:
            assert np.abs(got).max() <= np.float32(bounds)


@pytest.mark.parametrize("options, message", [
    (["--candidates", "0"], "candidates must be a whole number from 1 to 64"),
    (["--candidates", "65"], "candidates must be a whole number from 1 to 64"),
    (["--start-noise", "-0.5"], "start_noise must be a number from 0 to 100"),
    (["--start-noise", "nan"], "start_noise must be a number from 0 to 100"),
    (["--start-noise", "101"], "start_noise must be a number from 0 to 100"),
])
def test_reference_client_refuses_out_of_range_start_settings(tmp_path, options, message):
    done = run_client([str(world_dir("shapes")), "a red star", *options, "--out", str(tmp_path / "out")])
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_reference_client_refuses_a_modified_bundle(tmp_path):
    bundle = tmp_path / "digits"
    shutil.copytree(world_dir("digits"), bundle)
    data = bytearray((bundle / "translator.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (bundle / "translator.onnx").write_bytes(bytes(data))
    done = run_client([str(bundle), "3", "--out", str(tmp_path / "out")])
    assert done.returncode == 2 and "translator.onnx does not match its sha256" in done.stderr
    assert not (tmp_path / "out").exists()


def test_reference_client_bpe_matches_the_runtime_tokenizer_on_ascii_prompts():
    client = load_client()
    tok = CLIPTokenizer()
    folder = Path(tok.bpe_path).parent
    prompts = ["a photo of a cat", "A RED  star, on a grey background!", "it's 42 o'clock &amp; 3.5 dogs",
               "supercalifragilisticexpialidocious", "<start_of_text>hello"]
    for p in prompts:
        ids = client.bpe_tokens({"bpe_file": Path(tok.bpe_path).name}, folder, p)
        assert ids == [tok.sot_token_id, *tok.encode(p), tok.eot_token_id], p
