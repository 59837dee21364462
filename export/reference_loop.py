"""The reference code's sampling loop, restated faithfully: the baseline tr0n-rt is measured against and
checked against (github.com/layer6ai-labs/tr0n, text_hybrid_evaluator_synthetic_stylegan.py, the
"mixture" mode; optimizers/sgld.py). One prompt at a time, optimizer objects per prompt, a Python
loop, eager float32. The energy is tr0n-rt's (the same function; its augmentation is the faster
matrix form), so the baseline is not slowed by anything tr0n-rt changed.
"""
from __future__ import annotations

import torch
from torch import nn


class SGLD(torch.optim.Optimizer):
    """optimizers/sgld.py as the scripts use it: SGD momentum (dampening 0), then noise added to the
    parameter after the step, not scaled by lr."""

    def __init__(self, params, lr: float, momentum: float = 0.99, noise_std: float = 0.01):
        super().__init__(params, {"lr": lr, "momentum": momentum, "noise_std": noise_std})

    @torch.no_grad()
    def step(self, noise: list[torch.Tensor] | None = None):
        i = 0
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                buf = state.get("momentum_buffer")
                buf = p.grad.clone() if buf is None else buf.mul_(group["momentum"]).add_(p.grad)
                state["momentum_buffer"] = buf
                p.add_(buf, alpha=-group["lr"])
                eps = noise[i] if noise is not None else torch.randn_like(p)
                p.add_(eps * group["noise_std"])
                i += 1


def reference_sample(energy, means: torch.Tensor, logits: torch.Tensor, condition: torch.Tensor,
                     augs: list[torch.Tensor], noises: list[torch.Tensor] | None, hp, bound: float | None = None):
    """One prompt: means [1, K, D] and per-dimension logits [1, K, D] from the translator, refined for
    len(augs) steps. Returns the final means, logits and the energy of each step."""
    w = nn.Parameter(means.detach().clone())  # evaluator: w = means; w.requires_grad = True
    pi = nn.Parameter(logits.detach().clone())  # pi = logits.unsqueeze(-1).repeat(1, 1, d_z)
    optimizer = torch.optim.Adam([pi], lr=hp.logits_lr, eps=hp.adam_eps)  # --optim adam --lr 5e-3
    optimizer_latent = SGLD([w], lr=hp.latent_lr, momentum=hp.momentum, noise_std=hp.noise_std)
    energies = []
    for t, aug in enumerate(augs):
        z = (torch.softmax(pi, dim=1) * w).sum(1)  # w' = (softmax(pi, dim=1) * w).sum(1)
        loss = energy(z, condition, aug)  # 50 augmented CLIP embeddings -> -mean cosine
        energies.append(loss.detach())
        loss.sum().backward()
        torch.nn.utils.clip_grad_norm_((w,), hp.clip_norm)  # whole-tensor norm: per sample at batch 1
        torch.nn.utils.clip_grad_norm_((pi,), hp.clip_norm)
        optimizer_latent.step(None if noises is None else [noises[t]])
        optimizer.step()
        optimizer_latent.zero_grad()
        optimizer.zero_grad()
        if bound is not None:  # BigGAN: z.data = clamp(z.data, -2, 2)
            with torch.no_grad():
                w.clamp_(-bound, bound)
    return w.detach(), pi.detach(), torch.stack(energies)
