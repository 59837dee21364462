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


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_python_example_runs(index, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.chdir(ROOT)
    scope: dict = {}
    exec(compile(python_blocks()[index], f"README.md python block {index}", "exec"), scope)
    batch = scope.get("batch")
    if batch is not None:  # the sampling example: what its comment promises
        assert batch.images.shape == (4, 3, 32, 32) and batch.images.dtype == np.float32
        assert batch.seeds == [0, 1, 2, 3] and -1 <= batch.images.min() and batch.images.max() <= 1
