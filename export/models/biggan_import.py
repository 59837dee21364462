"""Loads the public PyTorch BigGAN weight layouts into `biggan`'s modules, spectral norm folded, never unpickling code.

Two layouts, one per family (files are read with safetensors or torch.load(weights_only=True)):

huggingface/pytorch-pretrained-BigGAN (BigGAN-deep: `pytorch_model.bin` + `config.json` in a folder, or the bare
file) -> BigGANDeepGenerator, `import_biggan_deep`. torch.nn.utils.spectral_norm layers store weight_orig,
weight_u, weight_v; in eval mode torch uses them without a power iteration:
    W = weight_orig / sigma,  sigma = u . (W_mat v),  W_mat = weight_orig.reshape(out, -1)
(`fold_torch_sn`). Names (j: GenBlock index, l: its index in `generator.layers`, l = j + (j >= attention_position);
"sn" = weight_orig / weight_u / weight_v folded into one weight):
    ours                        theirs
    embeddings.weight           embeddings.weight
    gen_z.weight, .bias         generator.gen_z sn, .bias      rows permuted from TF's [4, 4, C] order to [C, 4, 4]
    layers.j.conv_i.weight      generator.layers.l.conv_i sn   (.bias as is), i = 0..3
    layers.j.bn_i.scale.weight  generator.layers.l.bn_i.scale sn         (.offset likewise)
    layers.j.bn_i.running_mean  generator.layers.l.bn_i.running_means    [51, C]: the set for `truncation`
    layers.j.bn_i.running_var   generator.layers.l.bn_i.running_vars     (same selection)
    attention.theta.weight      generator.layers.{attention_position}.snconv1x1_theta sn (phi, g; o <- o_conv)
    attention.gamma []          generator.layers.{attention_position}.gamma [1]
    bn.weight, bn.bias          generator.bn.weight, .bias; bn.running_* <- generator.bn.running_means/vars
    conv_to_rgb.weight, .bias   generator.conv_to_rgb sn, .bias: the first 3 output channels (after folding)
The statistics for a truncation t follow pytorch-pretrained-BigGAN's BigGANBatchNorm exactly (`select_stats`),
including its weights: with (frac, i) = modf(t * (n_stats - 1)), stats[i] * frac + stats[i + 1] * (1 - frac).
TR0N draws z ~ N(0, I) clamped to [-2, 2], i.e. truncation 1.0 in that module's sense: the default.

ajbrock/BigGAN-PyTorch (the original BigGAN; `biggan-128/256/512.pth` from its TFHub/converter.py, which TR0N
loads) -> BigGANGenerator, `import_biggan`. Its SN layers store the weight itself, u0 [1, out] and sv0 [1]; in eval
mode they still run one power-iteration step from u0 (without storing it) and divide by that estimate:
    v = normalize(u0 W_mat), u = normalize(v W_mat^T), sigma = v W_mat^T u^T,  W = weight / sigma
(`fold_ajbrock_sn`, F.normalize with sn_eps). sv0 is a logged value, not used: read when present, then dropped
(the converter's files have none). Names (i: GBlock index, a: the block the attention follows):
    ours                        theirs
    shared.weight               shared.weight
    linear.weight, .bias        linear (weight, u0 -> folded), linear.bias
    blocks.i.conv{1,2}, conv_sc blocks.i.0.conv{1,2}, conv_sc (folded; .bias as is)
    blocks.i.bn{1,2}.scale      blocks.i.0.bn{1,2}.gain (folded)   .offset <- blocks.i.0.bn{1,2}.bias (folded)
    blocks.i.bn{1,2}.running_*  blocks.i.0.bn{1,2}.stored_mean / stored_var
    attention.{theta,phi,g,o}   blocks.a.1.{theta,phi,g,o} (folded), attention.gamma <- blocks.a.1.gamma
    output_bn.weight, .bias     output_layer.0.gain, .bias;  output_bn.running_* <- output_layer.0.stored_*
    output_conv                 output_layer.2 (folded)
Epsilons are not stored. The TF Hub models and the converter's config use 1e-4 for batch norm and spectral norm
(the defaults here); TR0N's reference runs them with BigGAN-PyTorch's parser defaults, BN_eps 1e-5 and SN_eps 1e-8.

Every source key must be consumed, every one of our keys produced; a missing, unexpected or misshapen key raises
CheckpointError naming it in the source's names.

    import_biggan_deep(path_or_state, truncation=1.0, bn_eps=None) -> BigGANDeepGenerator (eval, no grad)
    import_biggan(path_or_state, bn_eps=1e-4, sn_eps=1e-4) -> BigGANGenerator (eval, no grad)
    from_pretrained_biggan(state, truncation) / from_ajbrock(state, sn_eps) -> (config, our state dict)
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from tr0n_rt.errors import CheckpointError

from .biggan import BIGGAN_ARCH, DEEP_LAYERS, BigGANDeepGenerator, BigGANGenerator


# --- spectral norm, as each source computes it in eval mode -------------------------------------------
def fold_torch_sn(weight_orig: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """torch.nn.utils.spectral_norm in eval mode: weight_orig / (u . W_mat v), W_mat = weight_orig.reshape(out, -1)."""
    w = weight_orig.double()
    sigma = torch.dot(u.double(), w.reshape(w.shape[0], -1) @ v.double())
    return (w / sigma).to(weight_orig.dtype)


def fold_ajbrock_sn(weight: torch.Tensor, u0: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """BigGAN-PyTorch's SN in eval mode: one power-iteration step from u0 [1, out], then weight / sigma."""
    w = weight.double().reshape(weight.shape[0], -1)
    v = F.normalize(u0.double() @ w, eps=eps)
    u = F.normalize(v @ w.t(), eps=eps)
    sigma = ((v @ w.t()) @ u.t()).squeeze()
    return (weight.double() / sigma).to(weight.dtype)


def select_stats(stats: torch.Tensor, truncation: float) -> torch.Tensor:
    """pytorch-pretrained-BigGAN's statistics for a truncation in (0, 1]: stats [n_stats, C] -> [C]."""
    if not 0 < truncation <= 1:
        raise CheckpointError(f"BigGAN-deep stores batch-norm statistics for truncations in (0, 1], not {truncation}")
    frac, start = math.modf(truncation / (1.0 / (stats.shape[0] - 1)))
    start = int(start)
    if frac == 0.0:
        return stats[start].clone()
    return stats[start] * frac + stats[start + 1] * (1 - frac)


# --- reading ------------------------------------------------------------------------------------------
class _Source:
    """A source state dict, taken key by key: records missing and misshapen keys; `leftover` lists the rest."""

    def __init__(self, state: dict[str, torch.Tensor], layout: str):
        self.state = dict(state)
        self.layout = layout
        self.missing: list[str] = []
        self.misshapen: list[str] = []

    def take(self, key: str, shape: tuple | None = None) -> torch.Tensor | None:
        if key not in self.state:
            self.missing.append(key)
            return None
        t = self.state.pop(key)
        if shape is not None and tuple(t.shape) != tuple(shape):
            self.misshapen.append(f"{key}: {tuple(t.shape)}, expected {tuple(shape)}")
            return None
        return t.float()

    def drop(self, key: str) -> None:
        self.state.pop(key, None)

    def check(self, what: str) -> None:
        leftover = sorted(self.state)
        parts = [f"{name}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                 for name, keys in (("missing", self.missing), ("unexpected", leftover), ("wrong shape", self.misshapen))
                 if keys]
        if parts:
            raise CheckpointError(f"not a {self.layout} {what} ({'; '.join(parts)})")


def _torch_sn(src: _Source, prefix: str, shape: tuple) -> torch.Tensor | None:
    w = src.take(f"{prefix}.weight_orig", shape)
    u = src.take(f"{prefix}.weight_u", (shape[0],))
    v = src.take(f"{prefix}.weight_v", (math.prod(shape[1:]),))
    return None if w is None or u is None or v is None else fold_torch_sn(w, u, v)


def _ajbrock_sn(src: _Source, prefix: str, shape: tuple, eps: float) -> torch.Tensor | None:
    w = src.take(f"{prefix}.weight", shape)
    u = src.take(f"{prefix}.u0", (1, shape[0]))
    src.drop(f"{prefix}.sv0")  # logged singular value, unused in eval
    return None if w is None or u is None else fold_ajbrock_sn(w, u, eps)


def load_source_state(path_or_state) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state dict, config.json dict or None) from a dict, a weights file, or a folder holding
    pytorch_model.bin (+ config.json), never unpickling code."""
    if isinstance(path_or_state, dict):
        state, config = path_or_state, None
    else:
        path, config = Path(path_or_state), None
        if path.is_dir():
            if (path / "config.json").is_file():
                config = json.loads((path / "config.json").read_text())
            path = path / "pytorch_model.bin"
        from tr0n_rt.export.checkpoints import load_state

        state = load_state(path)  # CheckpointError when absent, unreadable, or a pickle needing code
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError("no BigGAN state dict of tensors found")
    return state, config


def _indices(state, pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in state if (m := re.match(pattern, k))})


def _need(state, *keys: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"cannot infer the BigGAN config, missing: {', '.join(missing)}")


# --- BigGAN-deep (huggingface/pytorch-pretrained-BigGAN) -----------------------------------------------
def infer_deep_config(state: dict[str, torch.Tensor]) -> dict:
    """BigGANDeepGenerator config (bn_eps aside) from a pytorch-pretrained-BigGAN state dict's keys and shapes."""
    _need(state, "embeddings.weight", "generator.gen_z.weight_orig", "generator.bn.weight")
    layers = _indices(state, r"^generator\.layers\.(\d+)\.")
    attn = [i for i in layers if f"generator.layers.{i}.snconv1x1_theta.weight_orig" in state]
    n_blocks = len(layers) - len(attn)
    res = {len(v): r for r, v in DEEP_LAYERS.items()}.get(n_blocks)
    if len(attn) != 1 or layers != list(range(len(layers))) or res is None:
        raise CheckpointError(f"pytorch-pretrained-BigGAN layers {layers} with attention at {attn}: expected "
                              f"contiguous layers, one attention layer and {sorted(len(v) for v in DEEP_LAYERS.values())}"
                              " GenBlocks (BigGAN-deep 128 / 256 / 512)")
    class_dim, n_classes = state["embeddings.weight"].shape
    return {"resolution": res, "ch": int(state["generator.bn.weight"].shape[0]),
            "dim_z": int(state["generator.gen_z.weight_orig"].shape[1] - class_dim), "class_dim": int(class_dim),
            "n_classes": int(n_classes), "attention_position": attn[0]}


def from_pretrained_biggan(state: dict[str, torch.Tensor], truncation: float = 1.0) -> tuple[dict, dict]:
    """pytorch-pretrained-BigGAN state dict -> (our config without bn_eps, our state dict), SN folded."""
    cfg = infer_deep_config(state)
    ch, pos, cond = cfg["ch"], cfg["attention_position"], cfg["dim_z"] + cfg["class_dim"]
    n_stats = state["generator.bn.running_means"].shape[0] if "generator.bn.running_means" in state else 51
    src = _Source(state, "pytorch-pretrained-BigGAN BigGAN-deep")
    out = {"embeddings.weight": src.take("embeddings.weight", (cfg["class_dim"], cfg["n_classes"]))}

    gen_z = _torch_sn(src, "generator.gen_z", (16 * ch * 16, cond))
    bias = src.take("generator.gen_z.bias", (16 * ch * 16,))
    if gen_z is not None and bias is not None:  # TF rows: (h, w, c) -> ours: (c, h, w)
        out["gen_z.weight"] = gen_z.reshape(4, 4, 16 * ch, cond).permute(2, 0, 1, 3).reshape(-1, cond)
        out["gen_z.bias"] = bias.reshape(4, 4, 16 * ch).permute(2, 0, 1).reshape(-1)

    def stats(ours: str, theirs: str, c: int) -> None:
        for mine, their in (("running_mean", "running_means"), ("running_var", "running_vars")):
            t = src.take(f"{theirs}.{their}", (n_stats, c))
            out[f"{ours}.{mine}"] = None if t is None else select_stats(t, truncation)

    for j, (up, cin, cout) in enumerate(DEEP_LAYERS[cfg["resolution"]]):
        theirs = f"generator.layers.{j + (j >= pos)}"
        mid = cin * ch // 4
        convs = ((cin * ch, mid, 1), (mid, mid, 3), (mid, mid, 3), (mid, cout * ch, 1))
        for i, (ci, co, k) in enumerate(convs):
            out[f"layers.{j}.conv_{i}.weight"] = _torch_sn(src, f"{theirs}.conv_{i}", (co, ci, k, k))
            out[f"layers.{j}.conv_{i}.bias"] = src.take(f"{theirs}.conv_{i}.bias", (co,))
            for name in ("scale", "offset"):
                out[f"layers.{j}.bn_{i}.{name}.weight"] = _torch_sn(src, f"{theirs}.bn_{i}.{name}", (ci, cond))
            stats(f"layers.{j}.bn_{i}", f"{theirs}.bn_{i}", ci)

    attn_ch = DEEP_LAYERS[cfg["resolution"]][pos][1] * ch
    a = f"generator.layers.{pos}"
    for ours, theirs, shape in (("theta", "snconv1x1_theta", (attn_ch // 8, attn_ch)),
                                ("phi", "snconv1x1_phi", (attn_ch // 8, attn_ch)),
                                ("g", "snconv1x1_g", (attn_ch // 2, attn_ch)),
                                ("o", "snconv1x1_o_conv", (attn_ch, attn_ch // 2))):
        out[f"attention.{ours}.weight"] = _torch_sn(src, f"{a}.{theirs}", (*shape, 1, 1))
    gamma = src.take(f"{a}.gamma", (1,))
    out["attention.gamma"] = None if gamma is None else gamma.reshape(())

    out["bn.weight"] = src.take("generator.bn.weight", (ch,))
    out["bn.bias"] = src.take("generator.bn.bias", (ch,))
    stats("bn", "generator.bn", ch)
    rgb = _torch_sn(src, "generator.conv_to_rgb", (ch, ch, 3, 3))  # sigma of the full ch-channel conv
    rgb_bias = src.take("generator.conv_to_rgb.bias", (ch,))
    out["conv_to_rgb.weight"] = None if rgb is None else rgb[:3].clone()
    out["conv_to_rgb.bias"] = None if rgb_bias is None else rgb_bias[:3].clone()
    src.check(f"generator at {cfg['resolution']}x{cfg['resolution']} (inferred {cfg})")
    return cfg, out


def import_biggan_deep(path_or_state, truncation: float = 1.0, bn_eps: float | None = None) -> BigGANDeepGenerator:
    """A BigGANDeepGenerator (eval, requires_grad off) from pytorch-pretrained-BigGAN weights: a state dict, a
    pytorch_model.bin, or its folder (config.json's eps is used when present). truncation picks the stored
    batch-norm statistics (1.0 = z unscaled, TR0N's prior); bn_eps overrides the epsilon (default 1e-4)."""
    state, file_cfg = load_source_state(path_or_state)
    cfg, ours = from_pretrained_biggan(state, truncation)
    if file_cfg is not None and file_cfg.get("output_dim", cfg["resolution"]) != cfg["resolution"]:
        raise CheckpointError(f"config.json says output_dim {file_cfg['output_dim']}, the weights are "
                              f"BigGAN-deep-{cfg['resolution']}")
    eps = bn_eps if bn_eps is not None else float((file_cfg or {}).get("eps", 1e-4))
    return _load(BigGANDeepGenerator(**cfg, bn_eps=eps), ours, cfg)


# --- original BigGAN (ajbrock/BigGAN-PyTorch) ---------------------------------------------------------
def infer_ajbrock_config(state: dict[str, torch.Tensor]) -> dict:
    """BigGANGenerator config (bn_eps aside) from a BigGAN-PyTorch generator state dict's keys and shapes."""
    _need(state, "shared.weight", "linear.weight", "output_layer.0.gain")
    blocks = _indices(state, r"^blocks\.(\d+)\.0\.")
    attn = _indices(state, r"^blocks\.(\d+)\.1\.")
    res = {len(a["in"]): r for r, a in BIGGAN_ARCH.items()}.get(len(blocks))
    if len(attn) != 1 or blocks != list(range(len(blocks))) or res is None:
        raise CheckpointError(f"BigGAN-PyTorch blocks {blocks} with attention after {attn}: expected contiguous "
                              f"blocks, one attention layer and {sorted(len(a['in']) for a in BIGGAN_ARCH.values())}"
                              " GBlocks (BigGAN 128 / 256 / 512)")
    n_classes, class_dim = state["shared.weight"].shape
    return {"resolution": res, "ch": int(state["output_layer.0.gain"].shape[0] // BIGGAN_ARCH[res]["out"][-1]),
            "dim_z": int(state["linear.weight"].shape[1] * (len(blocks) + 1)), "class_dim": int(class_dim),
            "n_classes": int(n_classes), "attention": 8 * 2 ** attn[0]}


def from_ajbrock(state: dict[str, torch.Tensor], sn_eps: float = 1e-4) -> tuple[dict, dict]:
    """BigGAN-PyTorch generator state dict -> (our config without bn_eps, our state dict), SN folded."""
    cfg = infer_ajbrock_config(state)
    arch, ch = BIGGAN_ARCH[cfg["resolution"]], cfg["ch"]
    chunk = cfg["dim_z"] // (len(arch["in"]) + 1)
    cond = cfg["class_dim"] + chunk
    src = _Source(state, "BigGAN-PyTorch BigGAN")
    out = {"shared.weight": src.take("shared.weight", (cfg["n_classes"], cfg["class_dim"]))}

    def conv(ours: str, theirs: str, shape: tuple, bias: bool = True) -> None:
        out[f"{ours}.weight"] = _ajbrock_sn(src, theirs, shape, sn_eps)
        if bias:
            out[f"{ours}.bias"] = src.take(f"{theirs}.bias", (shape[0],))

    def bn(ours: str, theirs: str, c: int) -> None:
        out[f"{ours}.scale.weight"] = _ajbrock_sn(src, f"{theirs}.gain", (c, cond), sn_eps)
        out[f"{ours}.offset.weight"] = _ajbrock_sn(src, f"{theirs}.bias", (c, cond), sn_eps)
        out[f"{ours}.running_mean"] = src.take(f"{theirs}.stored_mean", (c,))
        out[f"{ours}.running_var"] = src.take(f"{theirs}.stored_var", (c,))

    conv("linear", "linear", (arch["in"][0] * ch * 16, chunk))
    for i, (cin, cout) in enumerate(zip(arch["in"], arch["out"])):
        cin, cout = cin * ch, cout * ch
        conv(f"blocks.{i}.conv1", f"blocks.{i}.0.conv1", (cout, cin, 3, 3))
        conv(f"blocks.{i}.conv2", f"blocks.{i}.0.conv2", (cout, cout, 3, 3))
        conv(f"blocks.{i}.conv_sc", f"blocks.{i}.0.conv_sc", (cout, cin, 1, 1))
        bn(f"blocks.{i}.bn1", f"blocks.{i}.0.bn1", cin)
        bn(f"blocks.{i}.bn2", f"blocks.{i}.0.bn2", cout)
    a = int(math.log2(cfg["attention"] // 8))
    c = arch["out"][a] * ch
    for name, shape in (("theta", (c // 8, c)), ("phi", (c // 8, c)), ("g", (c // 2, c)), ("o", (c, c // 2))):
        conv(f"attention.{name}", f"blocks.{a}.1.{name}", (*shape, 1, 1), bias=False)
    out["attention.gamma"] = src.take(f"blocks.{a}.1.gamma", ())
    c = arch["out"][-1] * ch
    out["output_bn.weight"] = src.take("output_layer.0.gain", (c,))
    out["output_bn.bias"] = src.take("output_layer.0.bias", (c,))
    out["output_bn.running_mean"] = src.take("output_layer.0.stored_mean", (c,))
    out["output_bn.running_var"] = src.take("output_layer.0.stored_var", (c,))
    conv("output_conv", "output_layer.2", (3, c, 3, 3))
    src.check(f"generator at {cfg['resolution']}x{cfg['resolution']} (inferred {cfg})")
    return cfg, out


def import_biggan(path_or_state, bn_eps: float = 1e-4, sn_eps: float = 1e-4) -> BigGANGenerator:
    """A BigGANGenerator (eval, requires_grad off) from BigGAN-PyTorch generator weights (a state dict or a
    biggan-128/256/512.pth from its TFHub converter). Epsilons: see the module docstring."""
    state, _ = load_source_state(path_or_state)
    cfg, ours = from_ajbrock(state, sn_eps)
    return _load(BigGANGenerator(**cfg, bn_eps=bn_eps), ours, cfg)


def _load(model, ours: dict, cfg: dict):
    own = model.state_dict()
    missing = [k for k in own if ours.get(k) is None]
    unexpected = [k for k in ours if k not in own]
    misshapen = [f"{k}: {tuple(ours[k].shape)} vs {tuple(own[k].shape)}" for k in own
                 if ours.get(k) is not None and ours[k].shape != own[k].shape]
    if missing or unexpected or misshapen:  # a mapping bug, not a file problem: the source was checked
        raise CheckpointError(f"BigGAN weights do not fit {type(model).__name__}({cfg}): missing {missing[:8]}, "
                              f"unexpected {unexpected[:8]}, wrong shape {misshapen[:8]}")
    model.load_state_dict(ours, strict=True)
    return model.eval().requires_grad_(False)
