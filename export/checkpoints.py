"""Reading and writing weights safely: safetensors, or torch.load(weights_only=True). Never pickle."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from tr0n_rt.atomic import atomic_path
from tr0n_rt.errors import CheckpointError


def save_state(state: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Writes a state dict as safetensors, atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})


def load_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Loads a state dict from .safetensors, or from a torch file without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: check the path, or train/export it first")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:  # corrupt, truncated, or a pickle that needs code
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; "
            "the file is corrupt, truncated, or not a weights file (only safetensors and "
            "weights-only torch files are read)"
        ) from None
    for key in ("state_dict", "model", "model_state_dict", "translator_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors: save model.state_dict() instead")
    return state


def load_weights(module: nn.Module, path: str | os.PathLike, strict: bool = True) -> nn.Module:
    """Loads `path` into `module`, with an error that lists missing, unexpected and misshapen keys."""
    return load_fitting(module, load_state(path), str(path), strict=strict)


def load_fitting(module: nn.Module, state: dict[str, torch.Tensor], source: str, strict: bool = True) -> nn.Module:
    """Loads `state` into `module` if it fits: a CheckpointError names the missing, unexpected and misshapen
    keys (strict=False tolerates missing and unexpected ones, never wrong shapes). `source` names where the
    state came from, for the message."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshapen = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in own if k in state and state[k].shape != own[k].shape]
    if misshapen or (strict and (missing or unexpected)):
        parts = []
        for name, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)):
            if items:
                parts.append(f"{name}: {', '.join(items[:6])}{' ...' if len(items) > 6 else ''}")
        raise CheckpointError(
            f"{source} does not fit {type(module).__name__} ({'; '.join(parts)}): "
            "the checkpoint was made for another architecture or config"
        )
    module.load_state_dict(state, strict=strict)
    return module
