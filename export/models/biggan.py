"""BigGAN generators (Brock et al., ICLR 2019), original and deep, written for traced export.

Two families, each the architecture of one public set of weights (loaders in `biggan_import`):
    "biggan"       the original BigGAN of TF Hub (biggan-128/256/512, ch 96, hierarchical z), in the layout
                   of ajbrock/BigGAN-PyTorch (TFHub/converter.py). TR0N's reference runs BigGAN-512 of this kind.
    "biggan_deep"  BigGAN-deep of TF Hub (biggan-deep-128/256/512, ch 128, one shared conditioning vector),
                   in the layout of huggingface/pytorch-pretrained-BigGAN.

Latent: latent = [z | y] in R^(dim_z + class_dim), LatentSpec(truncation=2, bounds=2, extra={"class": class_dim}).
    z  the noise (120 / 140 / 128 for biggan-128 / 256 / 512; 128 for every biggan_deep),
    y  the class *embedding* (128), the vector G's conditional batch norms read, not the 1000-d one-hot.
This is TR0N's choice (layer6ai-labs/tr0n, model_biggan.py): it calls G(z, y) with y = G.shared(class),
draws synthetic pairs with y = one_hot(class) @ G.shared.weight (classes cycled, "categorical_fixed") and
gives its translator a 128-d y head (y_dim = G.shared_dim). A continuous 128-d y lets Langevin move between
and beyond the 1000 classes; a one-hot could not be refined by gradient steps without leaving the simplex,
and it would cost a 1000 x 128 matmul per step for nothing. The class table itself stays in the module
(`shared` / `embeddings`, unused by forward) to turn class ids into y: `class_vectors`, `sample_latent`.
Unlike the reference, which keeps y outside the mixture and refines it with Adam, tr0n-rt carries y in
the mixture means, so y gets the SGLD update and the [-2, 2] clamp like z.

Export-friendly choices (each equal to the reference in value, forward and gradient):
- Spectral normalisation is folded into plain weights when weights are imported (W / sigma, sigma from the
  stored singular vectors exactly as each source computes it in eval mode; see `biggan_import`).
- Batch norm is always the eval-time affine map with stored statistics, written out elementwise
  (x - mean) * rsqrt(var + eps) * (1 + scale(c)) + offset(c), with per-sample gains from the conditioning c.
  BigGAN-deep stores statistics for 51 truncation values; the importer picks one set (truncation 1.0 by default).
- Nearest x2 upsampling is expand + reshape, and the attention's 2x2 max pool is reshape + amax: no interpolate,
  no max_pool2d (their backward is index-based: ScatterND). amax splits the gradient among exact ties where
  max_pool2d picks one; the attention's pooled 1x1-conv outputs have no ties in practice.
- BigGAN-deep's first linear layer is stored in channel-major row order (the importer permutes the TF-order rows),
  and its to-RGB conv keeps only the 3 output channels the source slices off after a ch-channel conv.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tr0n_rt.errors import ConfigError

from .base import Generator, LatentSpec

TRUNCATION = 2.0  # TR0N: z ~ N(0, I) clamped to [-2, 2]; means clamped to [-2, 2] during Langevin

# Original BigGAN (ajbrock/BigGAN-PyTorch G_arch, TF Hub configs): channel multipliers of the GBlocks (each
# upsamples x2 from 4x4), the attention resolution and the noise size, per output resolution.
BIGGAN_ARCH = {
    128: {"in": (16, 16, 8, 4, 2), "out": (16, 8, 4, 2, 1), "attention": 64, "dim_z": 120},
    256: {"in": (16, 16, 8, 8, 4, 2), "out": (16, 8, 8, 4, 2, 1), "attention": 128, "dim_z": 140},
    512: {"in": (16, 16, 8, 8, 4, 2, 1), "out": (16, 8, 8, 4, 2, 1, 1), "attention": 64, "dim_z": 128},
}

# BigGAN-deep (pytorch-pretrained-BigGAN BigGANConfig.layers): (upsample, in multiplier, out multiplier) per
# GenBlock; the attention block sits before block `attention_position` (8: at 64x64 at every resolution).
_DEEP_HEAD = [(False, 16, 16), (True, 16, 16), (False, 16, 16), (True, 16, 8), (False, 8, 8)]
DEEP_LAYERS = {
    128: _DEEP_HEAD + [(True, 8, 4), (False, 4, 4), (True, 4, 2), (False, 2, 2), (True, 2, 1)],
    256: _DEEP_HEAD + [(True, 8, 8), (False, 8, 8), (True, 8, 4), (False, 4, 4), (True, 4, 2), (False, 2, 2),
                       (True, 2, 1)],
    512: _DEEP_HEAD + [(True, 8, 8), (False, 8, 8), (True, 8, 4), (False, 4, 4), (True, 4, 2), (False, 2, 2),
                       (True, 2, 1), (False, 1, 1), (True, 1, 1)],
}


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour x2: [B, C, H, W] -> [B, C, 2H, 2W] (F.interpolate(scale_factor=2) in value)."""
    b, c, h, w = x.shape
    return x[:, :, :, None, :, None].expand(b, c, h, 2, w, 2).reshape(b, c, 2 * h, 2 * w)


def maxpool2x(x: torch.Tensor) -> torch.Tensor:
    """2x2 max pool, stride 2: [B, C, H, W] -> [B, C, H/2, W/2] (F.max_pool2d(x, 2) in value)."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h // 2, 2, w // 2, 2).amax(dim=(3, 5))


class BatchNorm(nn.Module):
    """Eval-mode batch norm with stored statistics, conditional when cond_dim is given:
    x [B, C, H, W], c [B, cond_dim] -> (x - mean) / sqrt(var + eps) * gain + bias, with
    gain = 1 + scale(c), bias = offset(c) per sample (conditional), or learned vectors weight, bias."""

    def __init__(self, channels: int, cond_dim: int | None = None, eps: float = 1e-4):
        super().__init__()
        self.eps = eps
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        if cond_dim is None:
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))
        else:
            self.scale = nn.Linear(cond_dim, channels, bias=False)
            self.offset = nn.Linear(cond_dim, channels, bias=False)
        self.conditional = cond_dim is not None

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        inv = torch.rsqrt(self.running_var + self.eps)
        x = (x - self.running_mean[:, None, None]) * inv[:, None, None]
        if self.conditional:
            return x * (1 + self.scale(c))[:, :, None, None] + self.offset(c)[:, :, None, None]
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class SelfAttention(nn.Module):
    """SA-GAN's non-local block as BigGAN releases it: x [B, C, H, W] -> x + gamma * o(g . softmax(theta^T phi)),
    with phi and g max-pooled 2x2 (keys and values at a quarter of the positions). C/8 key, C/2 value channels."""

    def __init__(self, channels: int):
        super().__init__()
        self.theta = nn.Conv2d(channels, channels // 8, 1, bias=False)
        self.phi = nn.Conv2d(channels, channels // 8, 1, bias=False)
        self.g = nn.Conv2d(channels, channels // 2, 1, bias=False)
        self.o = nn.Conv2d(channels // 2, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        theta = self.theta(x).reshape(b, -1, h * w)  # [B, C/8, HW]
        phi = maxpool2x(self.phi(x)).reshape(b, -1, h * w // 4)  # [B, C/8, HW/4]
        g = maxpool2x(self.g(x)).reshape(b, -1, h * w // 4)  # [B, C/2, HW/4]
        attn = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)  # [B, HW, HW/4]
        o = self.o((g @ attn.transpose(1, 2)).reshape(b, -1, h, w))
        return x + self.gamma * o


class GBlock(nn.Module):
    """Original BigGAN residual block (always upsampling): c [B, cond_dim] = [y | z chunk].
    h = conv2(relu(bn2(conv1(up(relu(bn1(x, c)))), c))); out = h + conv_sc(up(x))."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int, eps: float):
        super().__init__()
        self.bn1 = BatchNorm(in_ch, cond_dim, eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.bn2 = BatchNorm(out_ch, cond_dim, eps)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_sc = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.conv1(upsample2x(F.relu(self.bn1(x, c))))
        h = self.conv2(F.relu(self.bn2(h, c)))
        return h + self.conv_sc(upsample2x(x))


class GenBlock(nn.Module):
    """BigGAN-deep bottleneck block: four (bn, relu, conv) with 1x1, 3x3, 3x3, 1x1 convs at in/4 channels, the
    upsampling (if any) before the first 3x3 conv; the skip keeps the first out channels of x (out <= in)."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int, up: bool, eps: float):
        super().__init__()
        if out_ch > in_ch:
            raise ConfigError(f"BigGAN-deep block widens {in_ch} -> {out_ch} channels; its skip can only drop channels")
        mid = in_ch // 4
        self.up = up
        self.out_ch = out_ch
        for i, (cin, cout, k) in enumerate(((in_ch, mid, 1), (mid, mid, 3), (mid, mid, 3), (mid, out_ch, 1))):
            self.add_module(f"bn_{i}", BatchNorm(cin, cond_dim, eps))
            self.add_module(f"conv_{i}", nn.Conv2d(cin, cout, k, padding=k // 2))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.conv_0(F.relu(self.bn_0(x, c)))
        h = F.relu(self.bn_1(h, c))
        h = self.conv_1(upsample2x(h) if self.up else h)
        h = self.conv_2(F.relu(self.bn_2(h, c)))
        h = self.conv_3(F.relu(self.bn_3(h, c)))
        skip = x[:, : self.out_ch]
        return h + (upsample2x(skip) if self.up else skip)


class _BigGANBase(Generator):
    """latent [B, dim_z + class_dim] = [z | y] -> images [B, 3, R, R] in [-1, 1]; see the module docstring.
    Draw training latents with `sample_latent`: `latent.sample_prior` would draw y ~ N(0, I), not a class."""

    dim_z: int
    class_dim: int
    n_classes: int

    def _set_latent(self, resolution: int, dim_z: int, class_dim: int, n_classes: int) -> None:
        self.image_size = resolution
        self.dim_z, self.class_dim, self.n_classes = dim_z, class_dim, n_classes
        self.latent = LatentSpec(dim=dim_z + class_dim, truncation=TRUNCATION, bounds=TRUNCATION,
                                 extra={"class": class_dim})

    def class_table(self) -> torch.Tensor:
        """The class embeddings y of every class, [n_classes, class_dim]."""
        raise NotImplementedError

    def class_vectors(self, classes: torch.Tensor) -> torch.Tensor:
        """Class ids [N] (int64) -> y [N, class_dim], the class part of the latent (one_hot @ table)."""
        table = self.class_table()
        return F.one_hot(classes.to(table.device), self.n_classes).to(table.dtype) @ table

    @torch.no_grad()
    def sample_latent(self, n: int, generator: torch.Generator | None = None,
                      classes: torch.Tensor | None = None) -> torch.Tensor:
        """TR0N's prior: z ~ N(0, I) clamped to [-2, 2] (drawn on the CPU), y = the embedding of a class.
        classes [n] int64: the classes (the reference cycles them: torch.arange(start, start + n) % n_classes);
        default uniformly random classes drawn from `generator`. Returns [n, latent.dim] on the weights' device."""
        z = torch.randn(n, self.dim_z, generator=generator).clamp(-TRUNCATION, TRUNCATION)
        if classes is None:
            classes = torch.randint(self.n_classes, (n,), generator=generator)
        y = self.class_vectors(classes)
        return torch.cat([z.to(y), y], dim=1)

    def split_latent(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.latent.check(latent)
        z, y = latent.split([self.dim_z, self.class_dim], dim=1)
        return z, y

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random weights with the scale of spectrally normalised ones (for tests and timing, not training):
        convs and linears N(0, 1/fan_in), batch-norm gains near 1, attention on (gamma 0.5), y entries N(0, 0.09)."""
        for name, m in self.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and not name.endswith(("scale", "offset")):
                nn.init.normal_(m.weight, 0.0, m.weight[0].numel() ** -0.5)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, BatchNorm) and m.conditional:
                nn.init.normal_(m.scale.weight, 0.0, 0.1 * m.scale.in_features ** -0.5)
                nn.init.normal_(m.offset.weight, 0.0, 0.1 * m.offset.in_features ** -0.5)
            elif isinstance(m, SelfAttention):
                m.gamma.fill_(0.5)
        self.class_table().normal_(0.0, 0.3)


class BigGANGenerator(_BigGANBase):
    """The original BigGAN (TF Hub biggan-128/256/512): hierarchical z.

    z is split into len(blocks) + 1 equal chunks: chunk 0 feeds the first linear layer (-> [16 ch, 4, 4]),
    chunk i + 1 joins y as block i's conditioning c = [y | z_{i+1}]. Then bn, relu, 3x3 conv to RGB, tanh.
    """

    family = "biggan"

    def __init__(self, resolution: int = 512, ch: int = 96, dim_z: int | None = None, class_dim: int = 128,
                 n_classes: int = 1000, attention: int | None = None, bn_eps: float = 1e-4):
        super().__init__()
        if resolution not in BIGGAN_ARCH:
            raise ConfigError(f"BigGAN resolution must be one of {sorted(BIGGAN_ARCH)}, got {resolution}")
        arch = BIGGAN_ARCH[resolution]
        dim_z = arch["dim_z"] if dim_z is None else dim_z
        attention = arch["attention"] if attention is None else attention
        n_blocks = len(arch["in"])
        block_res = [8 * 2 ** i for i in range(n_blocks)]
        if dim_z % (n_blocks + 1):
            raise ConfigError(f"BigGAN-{resolution} splits z into {n_blocks + 1} chunks: dim_z must be a multiple "
                              f"of {n_blocks + 1}, got {dim_z}")
        if attention not in block_res:
            raise ConfigError(f"BigGAN-{resolution} attention resolution must be one of {block_res}, got {attention}")
        self._set_latent(resolution, dim_z, class_dim, n_classes)
        self._config = {"resolution": resolution, "ch": ch, "dim_z": dim_z, "class_dim": class_dim,
                        "n_classes": n_classes, "attention": attention, "bn_eps": bn_eps}
        self.chunk = dim_z // (n_blocks + 1)
        self.attention_index = block_res.index(attention)  # attention follows this block

        self.shared = nn.Embedding(n_classes, class_dim)  # class id -> y (not used by forward)
        self.linear = nn.Linear(self.chunk, arch["in"][0] * ch * 16)
        self.blocks = nn.ModuleList(GBlock(i * ch, o * ch, class_dim + self.chunk, bn_eps)
                                    for i, o in zip(arch["in"], arch["out"]))
        self.attention = SelfAttention(arch["out"][self.attention_index] * ch)
        self.output_bn = BatchNorm(arch["out"][-1] * ch, eps=bn_eps)
        self.output_conv = nn.Conv2d(arch["out"][-1] * ch, 3, 3, padding=1)
        self.reset_parameters()

    def class_table(self) -> torch.Tensor:
        return self.shared.weight

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        z, y = self.split_latent(latent)
        zs = z.split(self.chunk, dim=1)
        h = self.linear(zs[0]).reshape(latent.shape[0], -1, 4, 4)
        for i, block in enumerate(self.blocks):
            h = block(h, torch.cat([y, zs[i + 1]], dim=1))
            if i == self.attention_index:
                h = self.attention(h)
        return torch.tanh(self.output_conv(F.relu(self.output_bn(h))))

    def config(self) -> dict:
        return dict(self._config)


class BigGANDeepGenerator(_BigGANBase):
    """BigGAN-deep (TF Hub biggan-deep-128/256/512): every block reads the same c = [z | y] (256-d).

    gen_z(c) -> [16 ch, 4, 4], GenBlocks (attention before block `attention_position`), bn, relu, 3x3 conv
    to RGB, tanh.
    """

    family = "biggan_deep"

    def __init__(self, resolution: int = 512, ch: int = 128, dim_z: int = 128, class_dim: int = 128,
                 n_classes: int = 1000, attention_position: int = 8, bn_eps: float = 1e-4):
        super().__init__()
        if resolution not in DEEP_LAYERS:
            raise ConfigError(f"BigGAN-deep resolution must be one of {sorted(DEEP_LAYERS)}, got {resolution}")
        layers = DEEP_LAYERS[resolution]
        if not 0 <= attention_position < len(layers):
            raise ConfigError(f"BigGAN-deep-{resolution} has {len(layers)} blocks: attention_position must be in "
                              f"[0, {len(layers) - 1}], got {attention_position}")
        self._set_latent(resolution, dim_z, class_dim, n_classes)
        self._config = {"resolution": resolution, "ch": ch, "dim_z": dim_z, "class_dim": class_dim,
                        "n_classes": n_classes, "attention_position": attention_position, "bn_eps": bn_eps}
        self.attention_position = attention_position
        cond = dim_z + class_dim

        self.embeddings = nn.Linear(n_classes, class_dim, bias=False)  # one-hot -> y (not used by forward)
        self.gen_z = nn.Linear(cond, 16 * ch * 16)  # rows in [C, 4, 4] order
        self.layers = nn.ModuleList(GenBlock(i * ch, o * ch, cond, up, bn_eps) for up, i, o in layers)
        self.attention = SelfAttention(layers[attention_position][1] * ch)
        self.bn = BatchNorm(ch, eps=bn_eps)
        self.conv_to_rgb = nn.Conv2d(ch, 3, 3, padding=1)
        self.reset_parameters()

    def class_table(self) -> torch.Tensor:
        return self.embeddings.weight.t()

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        self.latent.check(latent)
        h = self.gen_z(latent).reshape(latent.shape[0], -1, 4, 4)
        for i, block in enumerate(self.layers):
            if i == self.attention_position:
                h = self.attention(h)
            h = block(h, latent)
        return torch.tanh(self.conv_to_rgb(F.relu(self.bn(h))))

    def config(self) -> dict:
        return dict(self._config)
