"""Engines behind one interface (base.Backend). The torch backend needs the `export` extra."""
from __future__ import annotations

from ..errors import unknown_name

BACKENDS = ("torch",)


def open_backend(name: str, pipeline_dir, device: str = "cpu"):
    """Opens a pipeline folder with the named backend."""
    if name == "torch":
        from .torch import TorchBackend

        return TorchBackend.open(pipeline_dir, device=device)
    raise unknown_name("backend", name, BACKENDS)
