"""TR0N's energy E(z, c): minus the mean score of A augmented copies of G(z) against the condition.

    E(z, c, u) = -1/A sum_a score_f(DiffAugment(G(z), u_a), c)
score_f is the cosine similarity for CLIP (the reference's AugCosineSimLatent) and sum_j c_j log p_j
(minus the cross-entropy) for a classifier. The randomness u is an input (see augment.py).
"""
from __future__ import annotations

import torch
from torch import nn

from tr0n_rt.errors import ShapeError

from .augment import NOISE_DIM, AugmentConfig, diff_augment
from .models.base import ConditionModel, Generator


class Energy(nn.Module):
    def __init__(self, generator: Generator, condition_model: ConditionModel, augment: AugmentConfig):
        super().__init__()
        self.generator = generator
        self.condition_model = condition_model
        self.augment = augment

    def forward(self, z: torch.Tensor, c: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """z [B, D], c [B, d_c], u [B, A, NOISE_DIM] -> E [B]."""
        return self.of_images(self.generator(z), c, u)

    def of_images(self, images: torch.Tensor, c: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        b, a = images.shape[0], u.shape[1]
        if u.ndim != 3 or u.shape[0] != b or u.shape[2] != NOISE_DIM:
            raise ShapeError(
                f"augmentation noise has shape {tuple(u.shape)}, expected [{b}, copies, {NOISE_DIM}]"
            )
        copies = images[:, None].expand(b, a, *images.shape[1:]).reshape(b * a, *images.shape[1:])
        augmented = diff_augment(copies, u.reshape(b * a, NOISE_DIM), self.augment)
        c_rep = c[:, None].expand(b, a, c.shape[1]).reshape(b * a, c.shape[1])
        return -self.condition_model.score(augmented, c_rep).reshape(b, a).mean(dim=1)
