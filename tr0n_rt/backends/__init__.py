"""Engines behind one interface (base.Backend). The torch backend needs the `export` extra."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import BackendError, ConfigError, unknown_name

BACKENDS = ("torch", "onnxruntime", "tensorrt")


def check_pipeline_dir(folder, name: str | None = None) -> Path:
    """ConfigError unless `folder` is a folder holding manifest.json (a bundle) or pipeline.json (a
    pipeline); name: how messages call it (the command line: "--pipeline X"). Reads nothing else."""
    folder = Path(folder)
    name = name or str(folder)
    make = ("pass a pipeline or bundle folder (e.g. engines/shapes), or build one with "
            "`tr0n-rt train --world shapes` (a world) or `tr0n-rt export --pipeline DIR` (a bundle)")
    if not folder.exists():
        what = "is a broken symbolic link" if folder.is_symlink() else "does not exist"
        raise ConfigError(f"{name} {what}: {make}")
    if not folder.is_dir():
        raise ConfigError(f"{name} is a file, give a folder: {make}")
    if not any((folder / f).is_file() for f in ("manifest.json", "pipeline.json")):
        raise ConfigError(f"{name} holds neither manifest.json (a bundle) nor pipeline.json (a pipeline): {make}")
    return folder


def installed(module: str) -> bool:
    """Whether `module` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # an import hook that refuses it; a stub in sys.modules
        return False


def engines_here() -> str:
    """This install's onnxruntime and torch, with what they can run on: for messages about devices."""
    parts = []
    if installed("onnxruntime"):
        try:
            import onnxruntime

            parts.append(f"onnxruntime {onnxruntime.__version__} (providers: "
                         f"{', '.join(onnxruntime.get_available_providers())})")
        except Exception as e:  # noqa: BLE001 - a broken install is described, not raised
            parts.append(f"an onnxruntime that fails to import ({type(e).__name__})")
    else:
        parts.append("no onnxruntime")
    if installed("torch"):
        try:
            import torch

            parts.append(f"torch {torch.__version__} (" + (
                f"CUDA {torch.version.cuda}, {torch.cuda.device_count() if torch.cuda.is_available() else 0} "
                "device(s) visible" if torch.version.cuda else "a CPU build") + ")")
        except Exception as e:  # noqa: BLE001
            parts.append(f"a torch that fails to import ({type(e).__name__})")
    else:
        parts.append("no torch")
    return " and ".join(parts)


def torch_sees_cuda() -> bool:
    """Whether torch is installed as a CUDA build that sees a GPU (imports torch)."""
    if not installed("torch"):
        return False
    try:
        import torch

        return bool(torch.version.cuda) and torch.cuda.is_available() and torch.cuda.device_count() > 0
    except Exception:  # noqa: BLE001
        return False


def check_engine_for(name: str, folder: Path, device: str, chosen_by_auto: bool) -> None:
    """Says what is actually missing before an engine's own import fails with a vaguer message: a
    bundle-only folder on torch, a pipeline-only folder on onnxruntime, a CUDA device no engine here
    can use."""
    bundle, pipeline = (folder / "manifest.json").is_file(), (folder / "pipeline.json").is_file()
    cuda = device.startswith("cuda")
    if name == "torch":
        if not pipeline:  # a bundle: auto fell back to torch because onnxruntime cannot run it here
            if not chosen_by_auto:
                raise ConfigError(f"{folder} is a bundle (manifest.json, no pipeline.json): the torch backend runs "
                                  "pipeline folders; use --backend onnxruntime (or auto)")
            if cuda and installed("onnxruntime"):
                raise BackendError(f"device {device!r} needs a CUDA build of onnxruntime-gpu to run the bundle "
                                   f"{folder}; this install has {engines_here()}: `pip install 'tr0n-rt[gpu]'`, "
                                   "or use --device cpu")
            raise BackendError(f"{folder} is a bundle (manifest.json, no pipeline.json) and needs onnxruntime, "
                               f"which is not installed: `pip install 'tr0n-rt[cpu]'` (or 'tr0n-rt[gpu]' for CUDA)")
        if cuda and not torch_sees_cuda():
            raise BackendError(
                f"device {device!r} needs a CUDA build of onnxruntime-gpu (for a bundle) or torch (for a pipeline) "
                f"and a visible GPU; this install has {engines_here()}" + ("" if bundle else
                f"; {folder} is a pipeline without a bundle: export it (`tr0n-rt export --pipeline {folder}`) to "
                "run it with onnxruntime-gpu") + ". Use --device cpu, or install a CUDA build (`pip install "
                "'tr0n-rt[gpu]'`) and check the driver and CUDA_VISIBLE_DEVICES")
    elif name in ("onnxruntime", "tensorrt") and not bundle:
        raise ConfigError(f"{folder} is a pipeline (pipeline.json, no manifest.json): the {name} backend runs "
                          f"bundles; export it with `tr0n-rt export --pipeline {folder}`, or use --backend torch")


def choose_backend(name: str, pipeline_dir, device: str = "cpu") -> str:
    """"auto" -> onnxruntime when the folder holds a bundle (manifest.json) and onnxruntime is installed
    with a provider for `device` (cuda: the CUDA execution provider), else torch; any other name is
    returned as it is."""
    if name != "auto":
        return name
    if (Path(pipeline_dir) / "manifest.json").is_file() and installed("onnxruntime"):
        if not device.startswith("cuda"):
            return "onnxruntime"
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            return "onnxruntime"
    return "torch"


def open_backend(name: str, pipeline_dir, device: str = "cpu", precision: str = "fp32", threads: int | None = None):
    """Opens a pipeline folder with the named backend (or "auto", see choose_backend). threads: onnxruntime's
    intra-op threads (default: one per core); torch's are process-wide (torch.set_num_threads)."""
    folder = check_pipeline_dir(pipeline_dir)
    chosen = choose_backend(name, folder, device)
    check_engine_for(chosen, folder, device, chosen_by_auto=name == "auto")
    name = chosen
    if name == "torch":
        from .torch import TorchBackend

        if precision != "fp32":
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
