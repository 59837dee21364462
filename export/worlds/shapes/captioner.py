"""The shapes world's own captioner ("shapes_attributes" in captioner_registry): the offline stand-in for BLIP.

A three-head CNN (JudgeNet's architecture, but its own instance: another seed and its own stream of
procedural images, so the judge stays independent of everything that builds a translator) names an
image's shape, colour and background. A caption draws each attribute from its head's softmax by
nucleus sampling, then fills one of the world's caption templates (data.py), drawn uniformly:

    net = train_shapes_captioner(steps=1500, seed=1)
    captioner = ShapesAttributeCaptioner(net=net)
    captioner.caption(images, torch.Generator().manual_seed(0), NucleusConfig(top_p=0.9))
    # -> ["a photo of a red star on a white background", "blue circle", ...]

Greedy (sample=False) takes every argmax and the most complete template, CAPTION_TEMPLATES[GREEDY].
Token-level settings (min/max length, repetition penalty, beams) do not apply.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tr0n_rt.errors import ConfigError, ShapeError

from ...captioners import (
    Captioner,
    NucleusConfig,
    sample_choices,
    state_fingerprint,
)
from ...checkpoints import load_weights, save_state
from . import data
from .judge import HEADS, JudgeNet

CAPTION_TEMPLATES = data.TEMPLATES_FULL + data.TEMPLATES_BACKGROUND
GREEDY = CAPTION_TEMPLATES.index("a {colour} {shape} on a {background} background")
# The judge trains on np.random.default_rng(seed + 1) and the CLIP on default_rng(seed); the captioner's
# images come from a separate SeedSequence stream, default_rng([seed, DATA_STREAM]).
DATA_STREAM = 0xCA97


def train_shapes_captioner(steps: int = 1500, seed: int = 1, batch: int = 128, lr: float = 3e-3, width: int = 16,
                           progress: bool = False) -> JudgeNet:
    """A fresh JudgeNet-shaped attribute classifier trained on procedural images (data.py), freshly drawn
    every step from the captioner's own random stream. About 1.5 minutes on one CPU thread with the defaults
    (1000 steps: ~93% shape accuracy; 1500-2000: ~100%)."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, DATA_STREAM])
    net = JudgeNet(width=width)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: _warmup_cosine(i, steps, warmup))
    net.train()
    for _ in tqdm(range(steps), desc="shapes captioner", disable=not progress, mininterval=2.0):
        attrs = data.sample_attributes(batch, rng)
        logits = net(data.render(attrs))
        loss = sum(F.cross_entropy(logits[k], _indices(attrs, k)) for k in HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def _warmup_cosine(step: int, steps: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up over `warmup` steps, then a cosine decay to 0 at `steps`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))


def _indices(attrs: list[data.Attributes], head: str) -> torch.Tensor:
    return torch.tensor([HEADS[head].index(getattr(a, head)) for a in attrs])


@torch.no_grad()
def evaluate_captioner(net: JudgeNet, n: int = 2000, seed: int = 24680) -> dict:
    """Held-out attribute accuracy per head and for all three at once (procedural images of a seed that
    no training uses)."""
    attrs = data.sample_attributes(n, np.random.default_rng([seed, DATA_STREAM + 1]))
    logits = net.eval()(data.render(attrs))
    right = {k: logits[k].argmax(1) == _indices(attrs, k) for k in HEADS}
    out = {k: round(v.float().mean().item(), 4) for k, v in right.items()}
    out["all"] = round((right["shape"] & right["colour"] & right["background"]).float().mean().item(), 4)
    return out


def save_captioner(net: JudgeNet, path: str | Path) -> None:
    save_state(net.state_dict(), path, metadata=net.config())


class ShapesAttributeCaptioner(Captioner):
    """Captions of the shapes world from a trained attribute classifier.

    weights: a safetensors file from save_captioner (with width, the JudgeNet width it was trained with),
    or net: a trained JudgeNet in memory. config() records a fingerprint of the weights either way.
    """

    name = "shapes_attributes"

    def __init__(self, weights: str | Path | None = None, width: int = 16, net: JudgeNet | None = None,
                 device: str = "cpu"):  # the tiny net always runs on the CPU (attribute_logits moves images there)
        if (weights is None) == (net is None):
            raise ConfigError("give the shapes captioner exactly one of weights (a file) or net (a trained JudgeNet)")
        if net is None:
            net = load_weights(JudgeNet(width=width), weights)
        self.net = net.eval().requires_grad_(False)
        self.weights = None if weights is None else str(weights)
        self.fingerprint = state_fingerprint(self.net.state_dict())

    def config(self) -> dict:
        return {"weights": self.weights, "width": self.net.width, "fingerprint": self.fingerprint}

    @torch.no_grad()
    def attribute_logits(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images [N, 3, S, S] in [-1, 1] -> {"shape": [N, 5], "colour": [N, 6], "background": [N, 3]}."""
        s = self.net.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise ShapeError(f"the shapes captioner takes images [N, 3, {s}, {s}] in [-1, 1], got {tuple(images.shape)}")
        return self.net(images.float().cpu())

    def caption(self, images, rng, nucleus=None):
        nucleus = nucleus or NucleusConfig()
        k = nucleus.captions_per_image
        logits = self.attribute_logits(images)
        # one draw per caption and attribute, heads in HEADS order, then the templates
        picks = {h: sample_choices(logits[h].repeat_interleave(k, 0), nucleus, rng).tolist() for h in HEADS}
        n = images.shape[0] * k
        if nucleus.sample:
            templates = torch.randint(len(CAPTION_TEMPLATES), (n,), generator=rng).tolist()
        else:
            templates = [GREEDY] * n
        return [CAPTION_TEMPLATES[t].format(**{h: HEADS[h][picks[h][i]] for h in HEADS})
                for i, t in enumerate(templates)]


