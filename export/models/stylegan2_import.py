"""Loads rosinality/stylegan2-pytorch generator checkpoints into `StyleGAN2Generator`, without unpickling code.

A rosinality `.pt` (train.py) is {"g", "d", "g_ema", "g_optim", "d_optim", "args", "ada_aug_p"}; convert_weight.py
writes {"g_ema", "latent_avg"}. We take "g_ema" when present, else "g", else the dict itself (a bare state dict).
The file is read with torch.load(weights_only=True); the one class beyond tensors and plain containers that
train.py pickles is `args` (an argparse.Namespace, a bag of attributes), so that class alone is allowlisted.
A file whose unpickling needs any other code is refused with CheckpointError.

Names and reshapes follow the table in the `stylegan2` module docstring. Every rosinality key must be
consumed except the fixed FIR buffers (`*.blur.kernel`, `*.upsample.kernel`, checked to be the [1, 3, 3, 1]
filter ours hard-codes, then dropped); every one of our keys must be produced; any leftover, missing or
misshapen key raises CheckpointError naming it (in rosinality's names where the key comes from the file).

    import_rosinality(path_or_state, resolution=None, **config) -> StyleGAN2Generator (eval, no grad)
    from_rosinality(state, resolution, mapping_layers, noise="const") -> our state dict
    to_rosinality(state, resolution, mapping_layers) -> rosinality state dict (the inverse, without FIR buffers)
    infer_config(state) -> resolution, w_dim, z_dim, mapping_layers, channel_max, channel_base
"""
from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import torch

from tr0n_rt.errors import CheckpointError

from ..checkpoints import load_fitting
from .stylegan2 import StyleGAN2Generator, fir_kernel

# rosinality's fixed FIR buffers; ours are non-persistent buffers built from the same [1, 3, 3, 1] taps.
_FIXED_BUFFER = re.compile(r"^(convs\.\d+\.conv\.blur\.kernel|to_rgbs\.\d+\.upsample\.kernel)$")


def _conv_rows(ours: str, theirs: str, r: int, j: int, noise: bool) -> list[tuple[str, str, tuple | None]]:
    """(our key, their key, our shape or None when only a squeeze(0) / no reshape is needed) for one StyledConv."""
    rows = [(f"{ours}.weight", f"{theirs}.conv.weight", "squeeze0"),
            (f"{ours}.affine.weight", f"{theirs}.conv.modulation.weight", None),
            (f"{ours}.affine.bias", f"{theirs}.conv.modulation.bias", None),
            (f"{ours}.bias", f"{theirs}.activate.bias", None)]
    if noise:
        rows += [(f"{ours}.noise_strength", f"{theirs}.noise.weight", ()),
                 (f"{ours}.noise_const", f"noises.noise_{j}", (r, r))]
    return rows


def _rgb_rows(ours: str, theirs: str) -> list[tuple[str, str, tuple | None]]:
    return [(f"{ours}.weight", f"{theirs}.conv.weight", "squeeze0"),
            (f"{ours}.affine.weight", f"{theirs}.conv.modulation.weight", None),
            (f"{ours}.affine.bias", f"{theirs}.conv.modulation.bias", None),
            (f"{ours}.bias", f"{theirs}.bias", (3,))]


def key_table(resolution: int, mapping_layers: int, noise: bool = True) -> list[tuple[str, str, object]]:
    """The full name table for a generator: (our key, rosinality key, reshape) with reshape one of
    None (as is), "squeeze0" (drop rosinality's leading 1) or a target shape for ours."""
    rows = []
    for i in range(mapping_layers):
        rows += [(f"mapping.fc{i}.weight", f"style.{i + 1}.weight", None),
                 (f"mapping.fc{i}.bias", f"style.{i + 1}.bias", None)]
    rows.append(("synthesis.b4.const", "input.input", "squeeze0"))
    rows += _conv_rows("synthesis.b4.conv1", "conv1", 4, 0, noise)
    rows += _rgb_rows("synthesis.b4.torgb", "to_rgb1")
    for k in range(3, resolution.bit_length()):
        r, c = 2 ** k, 2 * (k - 3)
        rows += _conv_rows(f"synthesis.b{r}.conv0", f"convs.{c}", r, c + 1, noise)
        rows += _conv_rows(f"synthesis.b{r}.conv1", f"convs.{c + 1}", r, c + 2, noise)
        rows += _rgb_rows(f"synthesis.b{r}.torgb", f"to_rgbs.{k - 3}")
    return rows


def _missing_error(what: str, keys: list[str]) -> str:
    return f"{what}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"


def from_rosinality(state: dict[str, torch.Tensor], resolution: int, mapping_layers: int,
                    noise: str = "const") -> dict[str, torch.Tensor]:
    """rosinality state dict -> ours. noise="none" drops the noise strengths and noise images (consumed, unused).
    Raises CheckpointError naming every missing or unexpected rosinality key."""
    rows = key_table(resolution, mapping_layers, noise=True)
    use_noise = noise == "const"
    noise_keys = {theirs for ours, theirs, _ in rows if ours.endswith(("noise_strength", "noise_const"))}
    missing = [theirs for _, theirs, _ in rows if theirs not in state and (use_noise or theirs not in noise_keys)]
    wanted = {theirs for _, theirs, _ in rows}
    unexpected = [k for k in state if k not in wanted and not _FIXED_BUFFER.match(k)]
    if missing or unexpected:
        parts = [_missing_error(n, ks) for n, ks in (("missing", missing), ("unexpected", unexpected)) if ks]
        raise CheckpointError(f"not a rosinality StyleGAN2 generator at {resolution}x{resolution} with "
                              f"{mapping_layers} mapping layers ({'; '.join(parts)})")
    fir = fir_kernel(gain=4.0)  # rosinality make_kernel([1, 3, 3, 1]) * 2 ** 2, as ours
    odd = [k for k in state if _FIXED_BUFFER.match(k)
           and (state[k].shape != fir.shape or not torch.allclose(state[k].float(), fir, atol=1e-6))]
    if odd:
        raise CheckpointError(f"FIR buffers other than [1, 3, 3, 1] (not supported): {', '.join(odd[:8])}")
    out = {}
    for ours, theirs, reshape in rows:
        if not use_noise and theirs in noise_keys:
            continue
        t = state[theirs]
        if reshape == "squeeze0":
            if t.ndim == 0 or t.shape[0] != 1:
                raise CheckpointError(f"{theirs} has shape {tuple(t.shape)}; rosinality stores it with a leading 1")
            t = t.squeeze(0)
        elif reshape is not None:
            if t.numel() != math.prod(reshape):
                raise CheckpointError(f"{theirs} has shape {tuple(t.shape)}, cannot become {reshape}")
            t = t.reshape(reshape)
        out[ours] = t
    return out


def to_rosinality(state: dict[str, torch.Tensor], resolution: int, mapping_layers: int) -> dict[str, torch.Tensor]:
    """Ours -> rosinality (the inverse of from_rosinality; noise entries only where ours has them).
    rosinality's FIR buffers are not written (they are fixed; from_rosinality skips them)."""
    out = {}
    for ours, theirs, reshape in key_table(resolution, mapping_layers, noise=True):
        if ours not in state:
            if ours.endswith(("noise_strength", "noise_const")):
                continue
            raise CheckpointError(f"our state dict lacks {ours}")
        t = state[ours]
        if reshape == "squeeze0":
            t = t.unsqueeze(0)
        elif theirs.startswith("noises."):
            t = t.reshape(1, 1, *t.shape)
        elif ours.endswith("noise_strength"):
            t = t.reshape(1)
        elif reshape == (3,):
            t = t.reshape(1, 3, 1, 1)
        out[theirs] = t.clone()
    return out


def _select_generator(obj) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("g_ema", "g"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError("no rosinality generator state dict found (expected a dict with 'g_ema' or 'g', "
                              "or a state dict of tensors)")
    return obj


def load_rosinality_state(path_or_state) -> dict[str, torch.Tensor]:
    """The generator state dict (rosinality names) from a dict or a file, never unpickling code."""
    if isinstance(path_or_state, dict):
        return _select_generator(path_or_state)
    path = Path(path_or_state)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: check the path")
    if path.suffix == ".safetensors":
        from tr0n_rt.export.checkpoints import load_state

        return _select_generator(load_state(path))
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):  # train.py's `args`: plain attributes
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, or a pickle that needs code
        msg = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {msg}; the file is corrupt, "
                              "truncated, or holds objects other than tensors and plain containers "
                              "(code in a pickle is never run)") from None
    return _select_generator(obj)


def infer_config(state: dict[str, torch.Tensor]) -> dict:
    """Resolution, widths and mapping depth from a rosinality generator state dict's keys and shapes.
    mapping_lr_mul is not stored (rosinality's default lr_mlp 0.01 = ours); pass it if the run changed it."""
    rgbs = {int(m.group(1)) for k in state if (m := re.match(r"^to_rgbs\.(\d+)\.", k))}
    convs = {int(m.group(1)) for k in state if (m := re.match(r"^convs\.(\d+)\.", k))}
    n = len(rgbs)
    if rgbs != set(range(n)) or convs != set(range(2 * n)):
        raise CheckpointError(f"rosinality layers are not contiguous: to_rgbs {sorted(rgbs)}, convs {sorted(convs)} "
                              f"(expected to_rgbs 0..{n - 1} and convs 0..{2 * n - 1})")
    resolution = 2 ** (n + 2)
    styles = sorted(int(m.group(1)) for k in state if (m := re.match(r"^style\.(\d+)\.weight$", k)))
    if not styles or "input.input" not in state:
        raise CheckpointError("missing: " + ", ".join(k for k, ok in (("style.1.weight", bool(styles)),
                                                                      ("input.input", "input.input" in state))
                                                      if not ok))
    w_dim, z_dim = state[f"style.{styles[0]}.weight"].shape
    channel_max = state["input.input"].shape[1]
    last = f"to_rgbs.{n - 1}.conv.weight" if n else "to_rgb1.conv.weight"
    if last not in state:
        raise CheckpointError(f"missing: {last}")
    c_last = state[last].shape[2]
    return {"resolution": resolution, "w_dim": int(w_dim), "z_dim": int(z_dim), "mapping_layers": len(styles),
            "channel_max": int(channel_max), "channel_base": int(min(c_last, channel_max) * resolution)}


def import_rosinality(path_or_state, resolution: int | None = None, **config) -> StyleGAN2Generator:
    """A StyleGAN2Generator (eval, requires_grad off) holding a rosinality checkpoint's generator ("g_ema", else
    "g", else the dict itself). The config is inferred from the keys; `resolution` and `config` override it
    (e.g. noise="none", mapping_lr_mul). Any missing, unexpected or misshapen key raises CheckpointError."""
    state = load_rosinality_state(path_or_state)
    model, cfg = configured_generator(infer_config(state), resolution, config, "its to_rgbs/convs")
    ours = from_rosinality(state, cfg["resolution"], cfg["mapping_layers"], noise=cfg.get("noise", "const"))
    load_fitting(model, ours, f"rosinality checkpoint ({cfg})")
    return model.eval().requires_grad_(False)


def configured_generator(inferred: dict, resolution: int | None, config: dict, where: str):
    """(StyleGAN2Generator, its config): the config inferred from a checkpoint, overridden by `config`;
    a requested `resolution` must be the checkpoint's (`where` says what it was read from)."""
    if resolution is not None and resolution != inferred["resolution"]:
        raise CheckpointError(f"checkpoint is {inferred['resolution']}x{inferred['resolution']} "
                              f"(from {where}), not the requested {resolution}")
    cfg = {**inferred, **config}
    return StyleGAN2Generator(**cfg), cfg
