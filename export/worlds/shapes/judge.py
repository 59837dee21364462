"""The judge of the shapes world: a small CNN that names an image's shape, colour and background.

It is trained on procedural images (data.py) apart from the CLIP and never enters the energy, so it
can check samples without being the thing they were optimised against.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tr0n_rt.errors import ShapeError
from tr0n_rt.judge import word_verdicts

from ..judging import WorldJudge
from . import data

HEADS = {"shape": data.SHAPES, "colour": data.COLOUR_NAMES, "background": data.BACKGROUND_NAMES}


class JudgeNet(nn.Module):
    """images [N, 3, 32, 32] in [-1, 1] -> {"shape": [N, 5], "colour": [N, 6], "background": [N, 3]} logits.

    Four 3x3 conv blocks (32 -> 16 -> 8 -> 4 px), global average pool, one linear layer per head.
    """

    def __init__(self, width: int = 32, image_size: int = 32):
        super().__init__()
        self.width, self.image_size = int(width), int(image_size)
        w = self.width
        chans = [3, w, 2 * w, 4 * w, 4 * w]
        layers: list[nn.Module] = []
        for i in range(4):
            stride = 1 if i == 0 else 2
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride, 1, bias=False), nn.BatchNorm2d(chans[i + 1]),
                       nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleDict({k: nn.Linear(4 * w, len(v)) for k, v in HEADS.items()})

    def config(self) -> dict:
        return {"width": self.width, "image_size": self.image_size}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(images)
        return {k: head(h) for k, head in self.heads.items()}


class ShapesJudge(WorldJudge):
    """Checks generated images against their prompts.

        judge = ShapesJudge.load(spec["judge"], Path("engines/shapes"))
        judge.verdicts(images, ["a red star", ...])  # -> [{"shape": "star", ..., "correct": True}, ...]
    """

    family = "shapes_judge"
    net_class = JudgeNet

    def runtime_spec(self) -> dict:
        """What the torch-free judge (tr0n_rt/judge.py) needs besides judge.onnx: the heads' value names in
        output order, the input size, and the rule: a prompt's words are the bundle tokenizer's (the world's
        one word list, data.prompt_words), the first word naming a value of a head wins; a prompt is judged
        only if it names a value of a `needs_any` head."""
        return {"heads": {k: list(v) for k, v in HEADS.items()},
                "input": {"channels": 3, "size": self.net.image_size},
                "rule": {"kind": "words", "words": "tokenizer", "needs_any": ["shape", "colour"]}}

    @torch.no_grad()
    def probabilities(self, images) -> dict[str, np.ndarray]:
        """images [N, 3, S, S] in [-1, 1] (torch or numpy) -> {head: probabilities [N, n_values]}."""
        images = torch.as_tensor(images)
        s = self.net.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise ShapeError(f"judge takes images [N, 3, {s}, {s}] in [-1, 1], got {tuple(images.shape)}")
        logits = self.net(images.float())
        return {k: logits[k].softmax(-1).numpy() for k in HEADS}

    def predict(self, images) -> dict[str, tuple[list[str], np.ndarray]]:
        """images [N, 3, S, S] in [-1, 1] -> {head: (predicted names, confidences [N])}."""
        return {k: ([HEADS[k][i] for i in p.argmax(-1).tolist()], p.max(-1)) for k, p in self.probabilities(images).items()}

    def verdicts(self, images, prompts: list[str]) -> list[dict]:
        """One dict per image: predicted shape/colour/background, their confidences, what the prompt
        names ("wanted"), and "correct": every named attribute right (a prompt naming neither a shape
        nor a colour is never correct). The rule is tr0n_rt.judge's, as judge.onnx is judged."""
        if len(prompts) != images.shape[0]:
            raise ShapeError(f"{images.shape[0]} images but {len(prompts)} prompts: give one prompt per image")
        return word_verdicts(self.runtime_spec(), self.probabilities(images), prompts, data.prompt_words)
