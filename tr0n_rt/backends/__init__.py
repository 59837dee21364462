"""Engines behind one interface (base.Backend). The torch backend needs the `export` extra."""
from __future__ import annotations

from ..errors import unknown_name

BACKENDS = ("torch", "onnxruntime", "tensorrt")


def open_backend(name: str, pipeline_dir, device: str = "cpu", precision: str = "fp32"):
    """Opens a pipeline folder with the named backend."""
    if name == "torch":
        from .torch import TorchBackend

        if precision != "fp32":
            from ..errors import ConfigError

            raise ConfigError(f"the torch backend runs float32 only (asked for {precision}); "
                              "use --backend onnxruntime for the FP16 graphs")
        return TorchBackend.open(pipeline_dir, device=device)
    if name == "onnxruntime":
        from .onnxruntime import OrtBackend

        return OrtBackend.open(pipeline_dir, precision=precision, device=device)
    if name == "tensorrt":
        from .tensorrt import TrtBackend

        return TrtBackend.open(pipeline_dir, precision=precision, device=device)
    raise unknown_name("backend", name, BACKENDS)
