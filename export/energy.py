"""TR0N's energy E(z, c): minus the mean score of A augmented copies of G(z) against the condition.

    E(z, c, u) = -1/A sum_a score_f(DiffAugment(G(z), u_a), c)  [- alpha/A sum_a aesthetic(f(aug_a))]
score_f is the cosine similarity for CLIP (the reference's AugCosineSimLatent) and sum_j c_j log p_j
(minus the cross-entropy) for a classifier. The randomness u is an input (see augment.py).

The optional aesthetic term (the reference's AugCosineSimLatentAndAesthetic) is a linear head on the
normalised CLIP image embedding of each augmented copy, weighted by alpha (CLIP pipelines only).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tr0n_rt.errors import ConfigError, ShapeError

from tr0n_rt.graphs import AUG_DIM

from .augment import AugmentConfig, diff_augment
from .models.base import ConditionModel, Generator


class AestheticHead(nn.Linear):
    """score = w . e + b on a unit-norm CLIP image embedding e [N, d] -> [N]. Weights in LAION's
    aesthetic-predictor layout ({"weight": [1, d], "bias": [1]}, e.g. sa_0_4_vit_b_32_linear.pth)."""

    def __init__(self, dim: int):
        super().__init__(dim, 1)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return super().forward(embedding).squeeze(-1)


class Energy(nn.Module):
    def __init__(self, generator: Generator, condition_model: ConditionModel, augment: AugmentConfig,
                 aesthetic: AestheticHead | None = None):
        super().__init__()
        if aesthetic is not None and condition_model.kind != "clip":
            raise ConfigError("an aesthetic head scores CLIP image embeddings: this pipeline's condition model is "
                              f"a {condition_model.kind!r}; remove 'aesthetic' from its pipeline.json")
        self.generator = generator
        self.condition_model = condition_model
        self.augment = augment
        self.aesthetic = aesthetic

    def forward(self, z: torch.Tensor, c: torch.Tensor, u: torch.Tensor,
                aesthetic_weight: torch.Tensor | None = None) -> torch.Tensor:
        """z [B, D], c [B, d_c], u [B, A, AUG_DIM], aesthetic_weight [1] or None -> E [B]."""
        similarity, aesthetic = self.terms(self.generator(z), c, u)
        if aesthetic is None or aesthetic_weight is None:
            return -similarity
        return -similarity - aesthetic_weight * aesthetic

    def graph_outputs(self, z: torch.Tensor, c: torch.Tensor, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """The energy graph's outputs: energy [B] (the similarity term alone), and aesthetic [B] (the mean
        head score) when there is a head."""
        similarity, aesthetic = self.terms(self.generator(z), c, u)
        return {"energy": -similarity, **({"aesthetic": aesthetic} if aesthetic is not None else {})}

    def terms(self, images: torch.Tensor, c: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean score [B] over the A copies, and mean aesthetic score [B] (None without a head)."""
        similarity, aesthetic = self.copy_terms(images, c, u)
        return similarity.mean(dim=1), (aesthetic.mean(dim=1) if aesthetic is not None else None)

    def copy_terms(self, images: torch.Tensor, c: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """images [B, C, H, W], c [B, d_c], u [B, A, AUG_DIM] -> each copy's score [B, A], and its aesthetic
        score [B, A] (None without a head)."""
        b, a = images.shape[0], u.shape[1]
        if u.ndim != 3 or u.shape[0] != b or u.shape[2] != AUG_DIM:
            raise ShapeError(
                f"augmentation noise has shape {tuple(u.shape)}, expected [{b}, copies, {AUG_DIM}]"
            )
        copies = images[:, None].expand(b, a, *images.shape[1:]).reshape(b * a, *images.shape[1:])
        augmented = diff_augment(copies, u.reshape(b * a, AUG_DIM), self.augment)
        c_rep = c[:, None].expand(b, a, c.shape[1]).reshape(b * a, c.shape[1])
        if self.aesthetic is None:
            return self.condition_model.score(augmented, c_rep).reshape(b, a), None
        e = self.condition_model.encode_images(augmented)  # [B*A, d_c], unit norm
        similarity = (e * F.normalize(c_rep, dim=-1)).sum(-1)
        return similarity.reshape(b, a), self.aesthetic(e).reshape(b, a)

    def copy_sum(self, images: torch.Tensor, c: torch.Tensor, u: torch.Tensor,
                 aesthetic_weight: torch.Tensor | None = None) -> torch.Tensor:
        """sum over the given copies of each copy's energy -(score + alpha aesthetic) -> [B]: a chunk's part
        of A E (chunked step, export/step.py)."""
        similarity, aesthetic = self.copy_terms(images, c, u)
        if aesthetic is None or aesthetic_weight is None:
            return -similarity.sum(dim=1)
        return -(similarity + aesthetic_weight * aesthetic).sum(dim=1)
