"""Engines behind one interface (base.Backend). The torch backend needs the `export` extra."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import unknown_name

BACKENDS = ("torch", "onnxruntime", "tensorrt")


def choose_backend(name: str, pipeline_dir, device: str = "cpu") -> str:
    """"auto" -> onnxruntime when the folder holds a bundle (manifest.json) and onnxruntime is installed
    with a provider for `device` (cuda: the CUDA execution provider), else torch; any other name is
    returned as it is."""
    if name != "auto":
        return name
    if (Path(pipeline_dir) / "manifest.json").is_file() and importlib.util.find_spec("onnxruntime") is not None:
        if not device.startswith("cuda"):
            return "onnxruntime"
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            return "onnxruntime"
    return "torch"


def open_backend(name: str, pipeline_dir, device: str = "cpu", precision: str = "fp32", threads: int | None = None):
    """Opens a pipeline folder with the named backend (or "auto", see choose_backend). threads: onnxruntime's
    intra-op threads (default: one per core); torch's are process-wide (torch.set_num_threads)."""
    name = choose_backend(name, pipeline_dir, device)
    if name == "torch":
        from .torch import TorchBackend

        if precision != "fp32":
            from ..errors import ConfigError

            raise ConfigError(f"the torch backend runs float32 only (asked for {precision}); "
                              "use --backend onnxruntime for the FP16 graphs")
        return TorchBackend.open(pipeline_dir, device=device)
    if name == "onnxruntime":
        from .onnxruntime import OrtBackend

        return OrtBackend.open(pipeline_dir, precision=precision, device=device, threads=threads)
    if name == "tensorrt":
        from .tensorrt import TrtBackend

        return TrtBackend.open(pipeline_dir, precision=precision, device=device)
    raise unknown_name("backend", name, ("auto",) + BACKENDS)
