"""The two model contracts TR0N plugs together: a generator G and a condition model f.

Every adapter (DCGAN, the shapes renderer, StyleGAN2, BigGAN, open_clip, classifiers) implements one
of these, so translator training, the energy and the Langevin step never ask which model they have.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from tr0n_rt.errors import ShapeError


@dataclass(frozen=True)
class LatentSpec:
    """The flat latent z in R^dim that TR0N's translator predicts and Langevin refines.

    dim:        size of the flat latent, extra latents included (e.g. BigGAN: 128 noise + 128 class).
    truncation: prior samples are clamped to [-truncation, truncation] (BigGAN: 2.0); None = plain N(0, I).
    bounds:     refined latents are clamped to [-bounds, bounds] after every Langevin step (BigGAN: 2.0).
    extra:      names and sizes of extra latents stored at the end of z, in order (BigGAN: {"class": 128}).
    """

    dim: int
    truncation: float | None = None
    bounds: float | None = None
    extra: dict[str, int] = field(default_factory=dict)

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ p(z): [n, dim] float32, standard normal, clamped when a truncation is set."""
        z = torch.randn(n, self.dim, generator=generator)
        if self.truncation is not None:
            z = z.clamp(-self.truncation, self.truncation)
        return z

    def check(self, z: torch.Tensor) -> None:
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ShapeError(
                f"latent has shape {tuple(z.shape)}, expected [batch, {self.dim}]: "
                f"pass one flat {self.dim}-d latent per image"
            )

    def to_dict(self) -> dict:
        return asdict(self)


class Generator(nn.Module):
    """G: z [B, latent.dim] -> images [B, channels, image_size, image_size] in [-1, 1]."""

    family: str = ""  # its name in models/registry.py
    latent: LatentSpec
    image_size: int
    channels: int = 3

    def config(self) -> dict:
        """Constructor keyword arguments, JSON-serialisable: family + config rebuilds the module."""
        raise NotImplementedError

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Latents for synthetic pairs: z ~ p(z) by default; StyleGAN2 maps z to w."""
        return self.latent.sample_prior(n, generator=generator)


class ConditionModel(nn.Module):
    """f: the auxiliary model that gives conditions c = f(x) and scores images against a condition.

    kind = "clip":       c is a unit-norm embedding [B, cond_dim]; score = cosine similarity.
    kind = "classifier": c is a class distribution [B, num_classes] (one-hot at sampling time);
                         score = sum_j c_j log p_j(x), i.e. minus the cross-entropy.
    The energy of TR0N's Langevin step is minus the mean score over augmented copies.
    """

    family: str = ""
    kind: str = ""
    cond_dim: int

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, C, H, W] in [-1, 1] -> c [N, cond_dim] (differentiable)."""
        raise NotImplementedError

    def score(self, images: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """images [N, C, H, W] in [-1, 1], c [N, cond_dim] -> [N], higher = closer to the condition."""
        raise NotImplementedError

    def config(self) -> dict:
        raise NotImplementedError


class TextConditionModel(ConditionModel):
    """A condition model that also embeds text (CLIP): token ids -> c in the image embedding space."""

    context_length: int

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [N, context_length] int64 -> c [N, cond_dim], unit norm."""
        raise NotImplementedError
