"""The README's Python examples run as written (from the repository root, on the shipped shapes world)."""
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_the_readme_has_a_python_example():
    assert python_blocks(), "README.md lost its ```python example"


def serves(block: str) -> bool:
    return "tr0n_rt.serve" in block


@pytest.mark.parametrize("index", [pytest.param(i, marks=pytest.mark.slow) if serves(b) else i
                                   for i, b in enumerate(python_blocks())])
def test_python_example_runs(index, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.chdir(ROOT)
    scope: dict = {}
    block = python_blocks()[index]
    if serves(block):  # the client example talks to `tr0n-rt serve shapes --port 8000`, as the README starts it
        pytest.importorskip("ray")
        import signal
        import subprocess
        import sys

        server = subprocess.Popen([sys.executable, "-m", "tr0n_rt.cli", "serve", "shapes", "--port", "8000",
                                   "--threads", "1", "--cpus-per-replica", "0.5"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            exec(compile(block, f"README.md python block {index}", "exec"), scope)
        finally:
            server.send_signal(signal.SIGTERM)
            assert server.wait(timeout=120) == 0
        out = scope["out"]
        assert [r["seed"] for r in out["images"]] == [0, 1, 2, 3] and "correct" in out["images"][0]["judge"]
        assert scope["Client"].png(out["images"][0]).startswith(b"\x89PNG")
        return
    exec(compile(block, f"README.md python block {index}", "exec"), scope)
    batch = scope.get("batch")
    if batch is not None:  # the sampling example: what its comment promises
        assert batch.images.shape == (4, 3, 32, 32) and batch.images.dtype == np.float32
        assert batch.seeds == [0, 1, 2, 3] and -1 <= batch.images.min() and batch.images.max() <= 1
