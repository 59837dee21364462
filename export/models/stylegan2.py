"""StyleGAN2 config-f generator (Karras et al., CVPR 2020) in W space, written for traced export.

TR0N drives StyleGAN2 in W space: one w [B, w_dim] is broadcast to every synthesis layer, so the
latent the translator predicts and Langevin refines is w itself, and forward(w) runs only the
synthesis network. The mapping network (z -> w) is kept as `mapping` and is used to draw training
latents: TR0N's synthetic pairs take z ~ N(0, I), w = mapping(z) (no truncation), see `sample_latent`.

Export-friendly choices (each numerically equivalent to the reference):
- Modulated conv is *unfused*: conv(x * s, W) * d with one weight shared by the batch, instead of a
  grouped conv with per-sample weights (ONNX Conv.group is static, so that path has no dynamic batch).
  The fused path stays beside it as the reference (`fused=True`), tested to agree.
- Upsampling (x2, FIR filter [1, 3, 3, 1]) is a transposed conv followed by a depthwise blur conv; the
  RGB skip path upsamples with one depthwise transposed conv. No interpolate, no index ops (their
  backward becomes ScatterND).
- Noise is deterministic: noise="const" adds a fixed per-layer noise image (a buffer, drawn once from
  `noise_seed`) times the learned strength; noise="none" adds nothing. The references draw fresh noise
  per call by default, which makes G stochastic; TR0N's energy needs G to be a function of w.
- No fp16 layers. conv_clamp (optional, default None = no clamp, as in the converted FFHQ-1024 config-f
  checkpoint) clamps where NVIDIA's stylegan2-ada-pytorch does: every SynthesisLayer output, after bias,
  leaky ReLU and the sqrt(2) gain, to [-conv_clamp, +conv_clamp] (bias_act's clamp = conv_clamp * gain with the
  "skip" architecture's gain 1), and every ToRGB output, after its bias, to the same range. The RGB skip sum
  img = up(img) + rgb is not clamped. ADA-trained snapshots use conv_clamp=256 (a float16 overflow guard).
  The clamp is torch.clamp: ONNX Clip forwards, a where/mask backward.

Parameters are raw N(0, 1) draws scaled at run time (equalized learning rate), as in both references,
so checkpoints load without rescaling. Names follow NVIDIA's stylegan2-ada-pytorch layout (minus the
`resample_filter` buffers and `mapping.w_avg`); rosinality/stylegan2-pytorch names, for a checkpoint
loader (k >= 3 for the 2^k resolutions above 4; shapes: O out, I in channels, r resolution):

    ours                                   rosinality                      reshape ours <- theirs
    mapping.fc{i}.weight [w, z or w]       style.{i+1}.weight              -
    mapping.fc{i}.bias   [w]               style.{i+1}.bias                -
    synthesis.b4.const   [C, 4, 4]         input.input [1, C, 4, 4]        squeeze(0)
    synthesis.b4.conv1.*                   conv1.*                         see the layer rows
    synthesis.b4.torgb.*                   to_rgb1.*                       see the layer rows
    synthesis.b{2^k}.conv0.* (upsampling)  convs.{2(k-3)}.*                see the layer rows
    synthesis.b{2^k}.conv1.*               convs.{2(k-3)+1}.*              see the layer rows
    synthesis.b{2^k}.torgb.*               to_rgbs.{k-3}.*                 see the layer rows
  layer rows (convN = conv0/conv1, L = the matching rosinality layer):
    convN.weight [O, I, 3, 3]              L.conv.weight [1, O, I, 3, 3]   squeeze(0)
    convN.affine.weight [I, w]             L.conv.modulation.weight        -
    convN.affine.bias [I]                  L.conv.modulation.bias          -
    convN.bias [O]                         L.activate.bias                 -
    convN.noise_strength []                L.noise.weight [1]              reshape(())
    convN.noise_const [r, r]               noises.noise_{j} [1, 1, r, r]   reshape(r, r)
    torgb.weight [3, I, 1, 1]              L.conv.weight [1, 3, I, 1, 1]   squeeze(0)
    torgb.affine.weight                    L.conv.modulation.weight        -
    torgb.affine.bias                      L.conv.modulation.bias          -
    torgb.bias [3]                         L.bias [1, 3, 1, 1]             reshape(3)
  j = 0 for b4.conv1, else the convs index + 1. rosinality's FIR buffers (`*.blur.kernel`,
  `*.upsample.kernel`) are fixed, as ours are (not in the state dict): skip them. noise="none" has no
  noise_strength / noise_const entries.
Demodulation: rosinality (and this module) demodulate the gain-scaled weight, NVIDIA the raw weight;
the two differ only in where the 1e-8 epsilon sits.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tr0n_rt.errors import ConfigError

from .base import Generator, LatentSpec

NOISE_MODES = ("const", "none")
LRELU_SLOPE, LRELU_GAIN = 0.2, math.sqrt(2)


def fir_kernel(taps=(1.0, 3.0, 3.0, 1.0), gain: float = 1.0) -> torch.Tensor:
    """The separable FIR filter as a [k, k] kernel summing to `gain` (symmetric, so no flip is needed)."""
    t = torch.tensor(taps, dtype=torch.float32)
    k = torch.outer(t, t)
    return k * (gain / k.sum())


def blur(x: torch.Tensor, kernel: torch.Tensor, pad: int) -> torch.Tensor:
    """upfirdn2d(x, kernel, pad=(pad, pad)) as a depthwise conv: [B, C, H, W] -> [B, C, H + 2 pad - k + 1, ...]."""
    c = x.shape[1]
    return F.conv2d(x, kernel.expand(c, 1, *kernel.shape), padding=pad, groups=c)


def upsample2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """upfirdn2d(x, kernel, up=2, pad=(2, 1)) for a 4-tap kernel (gain 4): [B, C, H, W] -> [B, C, 2H, 2W].
    Zero insertion + padding (2, 1) + FIR is exactly a stride-2 transposed conv with padding 1."""
    c = x.shape[1]
    return F.conv_transpose2d(x, kernel.expand(c, 1, *kernel.shape), stride=2, padding=1, groups=c)


def channels_at(res: int, channel_base: int, channel_max: int) -> int:
    """Config-f widths: min(channel_base / res, channel_max), e.g. 512 up to 64x64, 256 at 128, 128 at 256."""
    return min(channel_base // res, channel_max)


class EqualLinear(nn.Module):
    """y = x (W * lr_mul / sqrt(in))^T + b * lr_mul, with W ~ N(0, 1) / lr_mul stored (equalized lr)."""

    def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activate: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_mul)
        return F.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN if self.activate else x


class MappingNetwork(nn.Module):
    """z [B, z_dim] -> w [B, w_dim]: normalise z to unit second moment, then `num_layers` FC + leaky ReLU."""

    def __init__(self, z_dim: int, w_dim: int, num_layers: int, lr_mul: float):
        super().__init__()
        self.num_layers = num_layers
        for i in range(num_layers):
            self.add_module(f"fc{i}", EqualLinear(z_dim if i == 0 else w_dim, w_dim, lr_mul=lr_mul, activate=True))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        return x


class ModulatedConv(nn.Module):
    """The style-modulated k x k conv: x [B, I, H, W], w [B, w_dim] -> [B, O, H', W'] (H' = 2H if up).

    s = affine(w) [B, I]; unfused: conv(x * s, W * g) * d with d [B, O] = rsqrt(sum_{i,k} (g W s)^2 + 1e-8),
    where g = 1 / sqrt(I k k). fused (reference): conv with the per-sample weight g W s d, grouped by sample.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, w_dim: int,
                 demodulate: bool = True, up: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.demodulate = demodulate
        self.up = up
        if up:  # upfirdn2d(pad=(1, 1)) after the stride-2 transposed 3x3 conv: 2H + 1 -> 2H
            self.register_buffer("blur_kernel", fir_kernel(gain=4.0), persistent=False)

    def modulated_conv(self, x: torch.Tensor, w: torch.Tensor, fused: bool = False) -> torch.Tensor:
        s = self.affine(w)  # [B, I]
        weight = self.weight * self.weight_gain  # [O, I, k, k]
        if fused:
            return self._grouped_conv(x, weight, s)
        x = x * s[:, :, None, None]  # broadcasts a batch-1 input (the constant) to the batch of w
        if self.up:
            x = blur(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2), self.blur_kernel, pad=1)
        else:
            x = F.conv2d(x, weight, padding=weight.shape[-1] // 2)
        if self.demodulate:
            # sum_{i,k} (W[o,i,k] s[b,i])^2 = (s^2 @ (sum_k W^2)^T)[b, o]: one small matmul, no [B, O, I, k, k]
            d = torch.rsqrt(s.square() @ weight.square().sum(dim=(2, 3)).t() + 1e-8)  # [B, O]
            x = x * d[:, :, None, None]
        return x

    def _grouped_conv(self, x: torch.Tensor, weight: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Reference: StyleGAN2's fused form. Exports only with a static batch (Conv.group = B)."""
        b = s.shape[0]
        o, i, k, _ = weight.shape
        wb = weight[None] * s[:, None, :, None, None]  # [B, O, I, k, k]
        if self.demodulate:
            wb = wb * torch.rsqrt(wb.square().sum(dim=(2, 3, 4)) + 1e-8)[:, :, None, None, None]
        x = x.expand(b, -1, -1, -1).reshape(1, b * i, x.shape[2], x.shape[3])
        if self.up:
            out = F.conv_transpose2d(x, wb.transpose(1, 2).reshape(b * i, o, k, k), stride=2, groups=b)
            return blur(out.reshape(b, o, out.shape[2], out.shape[3]), self.blur_kernel, pad=1)
        out = F.conv2d(x, wb.reshape(b * o, i, k, k), padding=k // 2, groups=b)
        return out.reshape(b, o, out.shape[2], out.shape[3])


def clamp_activation(x: torch.Tensor, conv_clamp: float | None) -> torch.Tensor:
    """NVIDIA's bias_act clamp: x.clamp(-conv_clamp, conv_clamp), or x itself when conv_clamp is None."""
    return x if conv_clamp is None else x.clamp(-conv_clamp, conv_clamp)


class SynthesisLayer(ModulatedConv):
    """Modulated 3x3 conv (upsampling if up) + noise + bias + leaky ReLU * sqrt(2) (then clamped to
    +-conv_clamp unless None), at resolution r."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool,
                 noise: str, noise_generator: torch.Generator, conv_clamp: float | None = None):
        super().__init__(in_channels, out_channels, 3, w_dim, demodulate=True, up=up)
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.conv_clamp = conv_clamp
        self.use_noise = noise == "const"
        if self.use_noise:
            self.noise_strength = nn.Parameter(torch.zeros(()))
            self.register_buffer("noise_const", torch.randn(resolution, resolution, generator=noise_generator))

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused: bool = False) -> torch.Tensor:
        x = self.modulated_conv(x, w, fused)
        if self.use_noise:
            x = x + self.noise_strength * self.noise_const  # one [r, r] image shared by batch and channels
        x = F.leaky_relu(x + self.bias[:, None, None], LRELU_SLOPE) * LRELU_GAIN
        return clamp_activation(x, self.conv_clamp)


class ToRGB(ModulatedConv):
    """Modulated 1x1 conv to RGB, not demodulated, + bias (linear), clamped to +-conv_clamp unless None."""

    def __init__(self, in_channels: int, w_dim: int, conv_clamp: float | None = None):
        super().__init__(in_channels, 3, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(3))
        self.conv_clamp = conv_clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused: bool = False) -> torch.Tensor:
        return clamp_activation(self.modulated_conv(x, w, fused) + self.bias[:, None, None], self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the "skip" generator: (const | conv0 up) -> conv1 -> torgb, img = up(img) + rgb."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, noise: str,
                 noise_generator: torch.Generator, conv_clamp: float | None = None):
        super().__init__()
        self.resolution = resolution
        if resolution == 4:
            self.const = nn.Parameter(torch.randn(out_channels, 4, 4))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, True, noise, noise_generator,
                                        conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, False, noise, noise_generator,
                                    conv_clamp)
        self.torgb = ToRGB(out_channels, w_dim, conv_clamp)
        if resolution > 4:
            self.register_buffer("up_kernel", fir_kernel(gain=4.0), persistent=False)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, w: torch.Tensor, fused: bool = False):
        """x [B, I, r/2, r/2] (None at 4x4), img [B, 3, r/2, r/2] (None at 4x4) -> x [B, O, r, r], img [B, 3, r, r]."""
        if self.resolution == 4:
            x = self.const[None]  # [1, O, 4, 4]; the first modulation broadcasts it to the batch
        else:
            x = self.conv0(x, w, fused)
        x = self.conv1(x, w, fused)
        rgb = self.torgb(x, w, fused)
        img = rgb if img is None else upsample2d(img, self.up_kernel) + rgb
        return x, img


class SynthesisNetwork(nn.Module):
    """w [B, w_dim] (the same w at every layer) -> raw images [B, 3, R, R] (not clamped to [-1, 1]; layer
    outputs are clamped to +-conv_clamp when it is set)."""

    def __init__(self, resolution: int, w_dim: int, channel_base: int, channel_max: int, noise: str,
                 noise_seed: int, conv_clamp: float | None = None):
        super().__init__()
        self.resolutions = [2 ** k for k in range(2, resolution.bit_length())]
        noise_generator = torch.Generator().manual_seed(noise_seed)
        in_ch = 0
        for res in self.resolutions:
            out_ch = channels_at(res, channel_base, channel_max)
            self.add_module(f"b{res}", SynthesisBlock(in_ch, out_ch, w_dim, res, noise, noise_generator,
                                                      conv_clamp))
            in_ch = out_ch

    def forward(self, w: torch.Tensor, fused: bool = False) -> torch.Tensor:
        x = img = None
        for res in self.resolutions:
            x, img = getattr(self, f"b{res}")(x, img, w, fused)
        return img


class StyleGAN2Generator(Generator):
    """w [B, w_dim] -> images [B, 3, resolution, resolution] in [-1, 1] (synthesis(w).clamp(-1, 1)).

    latent = LatentSpec(dim=w_dim): the latent is w, not z. Draw training latents with
    `sample_latent` (w = mapping(z), z ~ N(0, I)); `latent.sample_prior` would give N(0, I) in W space,
    which is not StyleGAN2's prior.

    conv_clamp: None (default: no clamp) or a positive number, NVIDIA's conv_clamp (256 in ADA-trained
    snapshots): synthesis-layer and ToRGB outputs are clamped to +-conv_clamp (see the module docstring).
    config() lists it only when set, so configs without it are unchanged.
    """

    family = "stylegan2"

    def __init__(self, resolution: int = 256, w_dim: int = 512, z_dim: int = 512, channel_base: int = 32768,
                 channel_max: int = 512, mapping_layers: int = 8, mapping_lr_mul: float = 0.01,
                 noise: str = "const", noise_seed: int = 0, conv_clamp: float | None = None):
        super().__init__()
        if resolution < 4 or resolution & (resolution - 1):
            raise ConfigError(f"StyleGAN2 resolution must be a power of two >= 4, got {resolution}")
        if noise not in NOISE_MODES:
            raise ConfigError(f"StyleGAN2 noise must be one of {NOISE_MODES}, got {noise!r}")
        if channels_at(resolution, channel_base, channel_max) < 1:
            raise ConfigError(f"channel_base {channel_base} leaves no channels at {resolution}x{resolution}: "
                              f"use channel_base >= {resolution}")
        if conv_clamp is not None:
            if isinstance(conv_clamp, bool) or not isinstance(conv_clamp, int | float) \
                    or not math.isfinite(conv_clamp) or conv_clamp <= 0:
                raise ConfigError(f"StyleGAN2 conv_clamp must be None or a positive finite number, got {conv_clamp!r}")
            conv_clamp = float(conv_clamp)
        self.latent = LatentSpec(dim=w_dim)
        self.image_size = resolution
        self.z_dim = z_dim
        self._config = {"resolution": resolution, "w_dim": w_dim, "z_dim": z_dim, "channel_base": channel_base,
                        "channel_max": channel_max, "mapping_layers": mapping_layers,
                        "mapping_lr_mul": mapping_lr_mul, "noise": noise, "noise_seed": noise_seed}
        if conv_clamp is not None:
            self._config["conv_clamp"] = conv_clamp
        self.mapping = MappingNetwork(z_dim, w_dim, mapping_layers, mapping_lr_mul)
        self.synthesis = SynthesisNetwork(resolution, w_dim, channel_base, channel_max, noise, noise_seed,
                                          conv_clamp)

    def forward(self, w: torch.Tensor, fused: bool = False) -> torch.Tensor:
        """fused=True runs the grouped-conv reference path (static batch only; for tests)."""
        self.latent.check(w)
        return self.synthesis(w, fused).clamp(-1, 1)

    @torch.no_grad()
    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """TR0N's latent prior in W space: z ~ N(0, I) [n, z_dim] (drawn on the CPU), w = mapping(z) [n, w_dim]."""
        z = torch.randn(n, self.z_dim, generator=generator)
        p = self.mapping.fc0.weight
        return self.mapping(z.to(device=p.device, dtype=p.dtype))

    sample_w = sample_latent

    def config(self) -> dict:
        return dict(self._config)
