"""The runtime core samples, and the CLI runs, in a process where torch, torchvision and open_clip
cannot be imported: the bundle and onnxruntime are all a deployment needs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime")


BLOCKED = ("torch", "torchvision", "open_clip")
# Installed as sitecustomize, so it is in place before the first line of any script or `-m` module.
BLOCKER = f"""
import atexit, json, os, sys

BLOCKED = {BLOCKED!r}
attempts = []


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            attempts.append(name)
            raise ImportError(f"{{name}} is blocked: the tr0n-rt runtime must not need it")
        return None


sys.meta_path.insert(0, Blocker())


@atexit.register
def report():
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    with open(os.environ["TORCH_FREE_REPORT"], "w") as f:
        json.dump({{"attempts": attempts, "loaded": loaded}}, f)
"""

SAMPLE = """
import sys

import numpy as np

from tr0n_rt.backends import open_backend
from tr0n_rt.sampler import Sampler
from tr0n_rt.settings import SamplingConfig

sampler = Sampler(open_backend("onnxruntime", sys.argv[1]), SamplingConfig(steps=3, copies=2))
out = sampler.sample(sampler.encode_text(["a red circle", "a blue square"]), [0, 1])
assert out.images.shape == (2, 3, 16, 16) and np.isfinite(out.images).all()
assert out.energy_trace.shape == (3, 2) and np.isfinite(out.energies).all()
np.save(sys.argv[2], out.images)
"""


@pytest.fixture
def run_torch_free(tmp_path):
    """Runs a Python command line with the blocker; returns (completed process, blocker's report)."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "TORCH_FREE_REPORT": str(tmp_path / "report.json"),
           "TR0N_RT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}

    def run(*args):
        done = subprocess.run([sys.executable, *map(str, args)], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)
        return done, json.loads((tmp_path / "report.json").read_text())
    return run


def test_the_blocker_blocks(run_torch_free):
    done, report = run_torch_free("-c", "import torch")
    assert done.returncode != 0 and "torch is blocked" in done.stderr
    assert report == {"attempts": ["torch"], "loaded": []}


def test_a_full_sample_needs_no_torch(run_torch_free, text_bundle, tmp_path):
    (tmp_path / "sample.py").write_text(SAMPLE)
    done, report = run_torch_free(tmp_path / "sample.py", text_bundle, tmp_path / "images.npy")
    assert done.returncode == 0, done.stderr
    assert report == {"attempts": [], "loaded": []}
    assert np.load(tmp_path / "images.npy").std() > 0.05


def test_the_cli_samples_without_torch(run_torch_free, text_bundle, tmp_path):
    out = tmp_path / "out"
    done, report = run_torch_free("-m", "tr0n_rt.cli", "sample", "a red circle", "--pipeline", text_bundle,
                                  "--backend", "onnxruntime", "--steps", "2", "--copies", "2", "--out", out)
    assert done.returncode == 0, done.stderr
    assert report == {"attempts": [], "loaded": []}
    data = json.loads((out / "samples.json").read_text())
    assert data["backend"] == "onnxruntime" and [r["prompt"] for r in data["images"]] == ["a red circle"]
    assert data["images"][0]["settings"]["steps"] == 2 and np.isfinite(data["images"][0]["energy"])
    assert (out / "000.png").is_file() and (out / "grid.png").is_file()
