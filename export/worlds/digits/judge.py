"""The digits judge: an independent classifier that says whether a sample shows the requested digit.

It is trained apart from the energy's classifier (other seed, other architecture: BatchNorm, max
pooling, dropout, a dense head) and never enters the Langevin energy, so a sample that merely fools
f is less likely to fool the judge as well.
"""
from __future__ import annotations

import re

import numpy as np
import torch
from torch import nn

from tr0n_rt.errors import ShapeError
from tr0n_rt.judge import class_verdicts, parse_class

from ..judging import WorldJudge
from .data import CLASSES

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_PREFIX = re.compile(r"^(?:an?\s+|the\s+)?(?:(?:digit|number|class|numeral)\s*:?\s*)?")


class JudgeNet(nn.Module):
    """images [N, channels, image_size, image_size] in [-1, 1] -> logits [N, num_classes]."""

    def __init__(self, num_classes: int = 10, channels: int = 1, image_size: int = 32, width: int = 24):
        super().__init__()
        self.num_classes, self.channels, self.image_size, self.width = num_classes, channels, image_size, width

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True), nn.MaxPool2d(2)]

        self.features = nn.Sequential(*block(channels, width), *block(width, 2 * width), *block(2 * width, 4 * width))
        side = image_size // 8
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(4 * width * side * side, 128),
                                  nn.ReLU(True), nn.Dropout(0.3), nn.Linear(128, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def config(self) -> dict:
        return {"num_classes": self.num_classes, "channels": self.channels,
                "image_size": self.image_size, "width": self.width}


class DigitsJudge(WorldJudge):
    """Checks generated digits against their target classes.

        judge = DigitsJudge.load(spec["judge"], Path("engines/digits"))
        judge.verdicts(images, ["3", "digit seven", ...])  # -> [{"predicted": "3", ..., "correct": True}, ...]
    """

    family = "digits_judge"
    net_class = JudgeNet

    def __init__(self, net: JudgeNet, classes: list[str] | None = None):
        super().__init__(net)
        self.classes = list(classes or CLASSES)

    def runtime_spec(self) -> dict:
        """What the torch-free judge (tr0n_rt/judge.py) needs besides judge.onnx: the class names in output
        order, the input size, and how a query names a class, exactly as parse_class reads it: lower-cased
        and stripped, `prefix` removed, then a one-character decimal digit or a word of `names`."""
        return {"heads": {"class": self.classes[:self.net.num_classes]},
                "input": {"channels": self.net.channels, "size": self.net.image_size},
                "rule": {"kind": "class", "prefix": _PREFIX.pattern, "names": {n: i for i, n in enumerate(NAMES)}}}

    @torch.no_grad()
    def probabilities(self, images) -> dict[str, np.ndarray]:
        """images [N, C, S, S] in [-1, 1] (torch or numpy) -> {"class": probabilities [N, num_classes]}."""
        x = torch.as_tensor(images, dtype=torch.float32)
        c, s = self.net.channels, self.net.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ShapeError(f"judge takes images [N, {c}, {s}, {s}] in [-1, 1], got {tuple(x.shape)}")
        return {"class": torch.cat([self.net(x[i:i + 256]).softmax(-1) for i in range(0, len(x), 256)]).numpy()}

    def parse_class(self, text: str | int) -> int:
        """'3', 'digit 3', 'three', 'the digit three', 3 -> 3; anything else raises PromptError."""
        return parse_class(self.runtime_spec(), text)

    def verdicts(self, images, classes: list[str]) -> list[dict]:
        """One dict per image: predicted class, its confidence, the target, the target's probability,
        correct. The rule is tr0n_rt.judge's, as judge.onnx is judged."""
        if len(classes) != len(images):
            raise ShapeError(f"got {len(images)} images but {len(classes)} target classes: pass one class per image")
        return class_verdicts(self.runtime_spec(), self.probabilities(images), classes)
