"""DCGAN generator (Radford et al., 2016): z -> 4x4 seed -> stride-2 transposed convs -> tanh.

Only ConvTranspose2d, BatchNorm2d (eval mode folds to a per-channel affine), ReLU, tanh and one
reshape, so the generator and its gradient w.r.t. z export to ONNX without custom ops.
"""
from __future__ import annotations

import torch
from torch import nn

from tr0n_rt.errors import ConfigError

from .base import Generator, LatentSpec


def num_upsamples(image_size: int) -> int:
    """Stride-2 stages after the 4x4 seed: 16 -> 2, 32 -> 3, 64 -> 4."""
    if image_size < 16 or image_size & (image_size - 1):
        raise ConfigError(f"DCGAN image_size must be a power of two >= 16, got {image_size}")
    return image_size.bit_length() - 3


class DCGANGenerator(Generator):
    """z [B, latent_dim] -> images [B, channels, image_size, image_size] in [-1, 1].

    Channels halve at each stage: width * 2^(n-1) at 4x4, ..., width at image_size / 2.
    """

    family = "dcgan"

    def __init__(self, latent_dim: int = 32, image_size: int = 32, channels: int = 1, width: int = 32):
        super().__init__()
        n = num_upsamples(image_size)
        if channels not in (1, 3):
            raise ConfigError(f"DCGAN channels must be 1 or 3, got {channels}")
        self.latent = LatentSpec(dim=latent_dim)
        self.image_size = image_size
        self.channels = channels
        self.width = width

        ch = width * 2 ** (n - 1)
        # [B, latent_dim, 1, 1] -> [B, ch, 4, 4]
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, ch, 4, 1, 0, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True)
        ]
        for _ in range(n - 1):  # each stage doubles H, W and halves channels
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # DCGAN init: conv weights N(0, 0.02), BatchNorm scale N(1, 0.02).
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.latent.check(z)
        return self.net(z.reshape(z.shape[0], -1, 1, 1))

    def config(self) -> dict:
        return {"latent_dim": self.latent.dim, "image_size": self.image_size,
                "channels": self.channels, "width": self.width}
