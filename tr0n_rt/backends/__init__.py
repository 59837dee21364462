"""Engines behind one interface (base.Backend). The torch backend needs the `export` extra."""
from __future__ import annotations

from ..errors import unknown_name

BACKENDS = ("torch", "onnxruntime")


def open_backend(name: str, pipeline_dir, device: str = "cpu", precision: str = "fp32"):
    """Opens a pipeline folder with the named backend."""
    if name == "torch":
        from .torch import TorchBackend

        return TorchBackend.open(pipeline_dir, device=device)
    if name == "onnxruntime":
        from .onnxruntime import OrtBackend

        return OrtBackend.open(pipeline_dir, precision=precision, device=device)
    raise unknown_name("backend", name, BACKENDS)
