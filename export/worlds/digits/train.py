"""Training for the digits world: a DCGAN on the digit images, and classifiers with light shift augmentation.

Everything is seeded and runs on one CPU thread in a few minutes; only the generator and the two
classifiers are kept (the discriminator is thrown away).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ...models.dcgan import DCGANGenerator, num_upsamples
from .data import random_shift


class DCGANDiscriminator(nn.Module):
    """images [B, C, S, S] in [-1, 1] -> real/fake logits [B]: stride-2 convs + LeakyReLU down to 4x4."""

    def __init__(self, image_size: int = 32, channels: int = 1, width: int = 32):
        super().__init__()
        n = num_upsamples(image_size)
        ch = width
        layers: list[nn.Module] = [nn.Conv2d(channels, ch, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for _ in range(n - 1):
            layers += [nn.Conv2d(ch, 2 * ch, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * ch), nn.LeakyReLU(0.2, True)]
            ch *= 2
        layers += [nn.Conv2d(ch, 1, 4, 1, 0)]  # 4x4 -> 1x1
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, decay: float) -> None:
    for pt, ps in zip(target.parameters(), source.parameters()):
        pt.lerp_(ps, 1.0 - decay)


@torch.no_grad()
def recalibrate_batchnorm(gen: DCGANGenerator, batches: int = 50, batch_size: int = 128, seed: int = 0) -> None:
    """Sets BatchNorm running statistics to exact averages over prior samples, so eval mode matches training."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in gen.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    gen.train()
    for _ in range(batches):
        gen(gen.latent.sample_prior(batch_size, generator=g))
    for m in bns:
        m.momentum = 0.1
    gen.eval()


def train_gan(
    x: torch.Tensor,
    *,
    latent_dim: int = 32,
    width: int = 32,
    steps: int = 3000,
    batch_size: int = 64,
    lr: float = 2e-4,
    ema_decay: float = 0.999,
    augment_shift: int = 2,
    seed: int = 0,
    progress: bool = True,
) -> DCGANGenerator:
    """Non-saturating DCGAN on x [N, C, S, S] in [-1, 1]; returns the EMA generator in eval mode.

    D sees real and fake images through the same random shift (DiffAugment's translation; gather is
    differentiable), which keeps D from memorising the 1,437 training digits.
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    _, channels, size, _ = x.shape
    gen = DCGANGenerator(latent_dim=latent_dim, image_size=size, channels=channels, width=width)
    disc = DCGANDiscriminator(image_size=size, channels=channels, width=width)
    gen_ema = copy.deepcopy(gen)
    opt_g = torch.optim.Adam(gen.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.999))
    ones = torch.ones(batch_size)

    def aug(images: torch.Tensor) -> torch.Tensor:
        return random_shift(images, augment_shift, generator=g)

    bar = tqdm(range(steps), desc="dcgan", disable=not progress, mininterval=2.0)
    for step in bar:
        real = x[torch.randint(0, len(x), (batch_size,), generator=g)]
        z = gen.latent.sample_prior(batch_size, generator=g)
        fake = gen(z)

        # D: real -> 1 (smoothed to 0.9), fake -> 0.
        d_loss = (F.binary_cross_entropy_with_logits(disc(aug(real)), 0.9 * ones)
                  + F.binary_cross_entropy_with_logits(disc(aug(fake.detach())), 0 * ones))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()

        # G: non-saturating loss, -log D(G(z)).
        g_loss = F.binary_cross_entropy_with_logits(disc(aug(fake)), ones)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        ema_update(gen_ema, gen, ema_decay if step > 200 else 0.0)
        if step % 50 == 0:
            bar.set_postfix(d=f"{d_loss.item():.3f}", g=f"{g_loss.item():.3f}")

    recalibrate_batchnorm(gen_ema, seed=seed)
    return gen_ema


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 2e-3,
    max_shift: int = 2,
    seed: int = 0,
    progress: bool = True,
    desc: str = "classifier",
) -> nn.Module:
    """Cross-entropy with AdamW + one-cycle schedule, random shifts of up to max_shift pixels; returns model.eval()."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    steps_per_epoch = (len(x) + batch_size - 1) // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    model.train()
    for _ in tqdm(range(epochs), desc=desc, disable=not progress, mininterval=2.0):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            logits = model(random_shift(x[idx], max_shift, generator=g))
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    model.eval()
    hits = sum((model(x[i:i + batch_size]).argmax(-1) == y[i:i + batch_size]).sum().item()
               for i in range(0, len(x), batch_size))
    return hits / len(x)
