"""A small CNN classifier as TR0N's condition model f (the paper's class-conditional experiment).

c = softmax(f(x)) when making synthetic pairs, one-hot at sampling; score(x, c) = sum_j c_j log p_j(x),
minus the cross-entropy, so the Langevin energy -score is the cross-entropy of the target class.
Only Conv2d, ReLU, a spatial mean and Linear: the score and its gradient export to ONNX as-is.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tr0n_rt.errors import ConfigError, ShapeError

from .base import ConditionModel


class CNNClassifier(ConditionModel):
    """images [N, channels, image_size, image_size] in [-1, 1] -> logits [N, num_classes].

    3x3 conv at full size, then stride-2 3x3 convs down to 4x4 (channels doubling), global mean, Linear.
    """

    family = "cnn_classifier"

    kind = "classifier"

    def __init__(self, num_classes: int = 10, channels: int = 1, image_size: int = 32, width: int = 32):
        super().__init__()
        if image_size < 8 or image_size & (image_size - 1):
            raise ConfigError(f"CNNClassifier image_size must be a power of two >= 8, got {image_size}")
        self.num_classes = num_classes
        self.cond_dim = num_classes
        self.channels = channels
        self.image_size = image_size
        self.width = width

        ch = width
        layers: list[nn.Module] = [nn.Conv2d(channels, ch, 3, 1, 1), nn.ReLU(True)]
        size = image_size
        while size > 4:  # 32 -> 16 -> 8 -> 4
            layers += [nn.Conv2d(ch, 2 * ch, 3, 2, 1), nn.ReLU(True), nn.Conv2d(2 * ch, 2 * ch, 3, 1, 1), nn.ReLU(True)]
            ch *= 2
            size //= 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(ch, num_classes)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1:] != (self.channels, self.image_size, self.image_size):
            raise ShapeError(
                f"classifier input has shape {tuple(images.shape)}, expected "
                f"[N, {self.channels}, {self.image_size}, {self.image_size}]: resize images to the classifier's size"
            )
        return self.head(self.features(images).mean(dim=(2, 3)))

    forward = logits

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, C, H, W] in [-1, 1] -> class probabilities [N, num_classes]."""
        return self.logits(images).softmax(dim=-1)

    def score(self, images: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """[N] = sum_j c_j log softmax(logits)_j = -cross_entropy(logits, c) for a one-hot or soft c."""
        return (c * F.log_softmax(self.logits(images), dim=-1)).sum(dim=-1)

    def config(self) -> dict:
        return {"num_classes": self.num_classes, "channels": self.channels,
                "image_size": self.image_size, "width": self.width}
