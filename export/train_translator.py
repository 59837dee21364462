"""TR0N's translator training (Algorithm 1, step 2): maximise log q(z | c) over synthetic pairs.

Loss = nll_scale * mean_b -log q(z_b | c_b + noise_b), Adam with a per-step cosine schedule and
gradient-norm clipping, as the reference (which uses batch 16, lr 1e-4, 10 epochs on 1M pairs).
Condition noise mimics text embeddings from image embeddings: "absolute" adds N(0, s^2 I) (the
reference: s = 0.2 for StyleGAN2, 0.5 for BigGAN + LAION CLIP); "relative" scales it so that
||noise|| ~ s ||c||.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tr0n_rt.errors import ConfigError

from .translator import TranslatorConfig, TranslatorGMM


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-4
    grad_clip: float = 1.0
    nll_scale: float = 1e-4
    condition_noise: float = 0.0
    noise_mode: str = "absolute"  # "absolute" | "relative"
    seed: int = 0

    def __post_init__(self):
        if self.noise_mode not in ("absolute", "relative"):
            raise ConfigError(f"noise_mode must be 'absolute' or 'relative', got {self.noise_mode!r}")


def noisy(c: torch.Tensor, cfg: TrainConfig, rng: torch.Generator) -> torch.Tensor:
    if cfg.condition_noise == 0:
        return c
    eps = torch.randn(c.shape, generator=rng)
    if cfg.noise_mode == "relative":
        eps = eps * c.norm(dim=1, keepdim=True) / math.sqrt(c.shape[1])
    return c + cfg.condition_noise * eps


def train_translator(z: torch.Tensor, c: torch.Tensor, config: TranslatorConfig, train: TrainConfig,
                     progress: bool = True) -> tuple[TranslatorGMM, list[float]]:
    """z [N, D], c [N, d_c] -> a trained translator and the mean loss of each epoch."""
    from tqdm.auto import tqdm

    torch.manual_seed(train.seed)
    rng = torch.Generator().manual_seed(train.seed)
    model = TranslatorGMM(config).train()
    opt = torch.optim.Adam(model.parameters(), lr=train.lr)
    steps_per_epoch = -(-z.shape[0] // train.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps_per_epoch * train.epochs)
    history = []
    bar = tqdm(total=steps_per_epoch * train.epochs, desc="translator", disable=not progress)
    for _ in range(train.epochs):
        order = torch.randperm(z.shape[0], generator=rng)
        total = 0.0
        for start in range(0, z.shape[0], train.batch_size):
            idx = order[start:start + train.batch_size]
            loss = -train.nll_scale * model.log_prob(z[idx], noisy(c[idx], train, rng)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            bar.update(1)
        history.append(total / z.shape[0] / train.nll_scale)
        bar.set_postfix(nll=f"{history[-1]:.2f}")
    bar.close()
    return model.eval(), history
