"""One entry point for StyleGAN2 checkpoint files, the loader picked by suffix: NVIDIA's pickles
(stylegan2_pkl) or rosinality checkpoints (stylegan2_import). Neither loader runs code from the file.
"""
from __future__ import annotations

from pathlib import Path

from tr0n_rt.errors import CheckpointError

from .stylegan2 import StyleGAN2Generator
from .stylegan2_import import import_rosinality
from .stylegan2_pkl import import_nvidia_pkl

NVIDIA_SUFFIXES = (".pkl",)
ROSINALITY_SUFFIXES = (".pt", ".pth", ".safetensors")


def import_stylegan2(path, **config) -> StyleGAN2Generator:
    """A StyleGAN2Generator (eval, requires_grad off) from a checkpoint file, the loader picked by its suffix:
    .pkl -> NVIDIA's official pickles (stylegan2_pkl.import_nvidia_pkl: network-snapshot-*.pkl, stylegan2-*.pkl;
    conv_clamp is taken from the file), .pt / .pth / .safetensors -> rosinality checkpoints (import_rosinality).
    `config` goes to that loader (resolution=, noise=, ...). Neither loader runs code from the file.
    Any other suffix raises CheckpointError naming the formats that are read."""
    if not isinstance(path, str | Path):
        raise CheckpointError(f"import_stylegan2 takes a file path, got {type(path).__name__} (for an in-memory "
                              "state dict use import_rosinality, for an NVIDIA record import_nvidia_pkl)")
    path = Path(path)
    suffix = path.suffix
    if suffix in NVIDIA_SUFFIXES:
        return import_nvidia_pkl(path, **config)
    if suffix in ROSINALITY_SUFFIXES:
        return import_rosinality(path, **config)
    found = repr(path.suffix) if path.suffix else "(none)"
    raise CheckpointError(f"{path.name}: unknown StyleGAN2 checkpoint suffix {found}; read are "
                          "NVIDIA's network pickles (.pkl, stylegan2-ada-pytorch / stylegan3) and rosinality "
                          "checkpoints (.pt, .pth, .safetensors)")
