"""The one Langevin step of TR0N's sampling, as a pure function of tensors.

Executed eagerly by the torch backend, traced into step.onnx by the exporter, run by engines.
State (all [B, K, D] except step):
    means     mixture means mu_k (sample mode: K = 1, the latent itself)
    logits    mixture logits pi, one copy per latent dimension (reference: logits.repeat over D)
    velocity  SGLD momentum buffer of the means
    adam_m, adam_v   Adam moments of the logits
    step      [1] number of steps already taken (Adam's bias correction)
Latent fed to G: z' = sum_k softmax_k(pi)[., k, d] * mu[., k, d]           [B, D]
Update, per sample b (the reference runs batch 1, so its whole-tensor clipping is per sample):
    g_mu, g_pi = dE/dmu, dE/dpi, each clipped to norm <= clip_norm
    v  = momentum v + g_mu;  mu = mu - lr v + noise_std eps;  mu = clamp(mu, -bound, bound)
    pi = Adam(pi, g_pi, logits_lr, eps)               (torch.optim.Adam's arithmetic, betas 0.9/0.999)

The same step in pieces, so that its memory does not grow with A (the chunked step; tr0n_rt/memory.py
plans it): x = G(z') once; the A copies in chunks of m, each adding its share of E and of s dE/dx
(copies_energy_grad, accumulated in a fixed order); then update_from_image_grad runs G's forward again
and its backward once from the summed dE/dx, and applies the same update. The recomputed forward costs
one more generator forward per step; in exchange G's activations and one chunk's encoder activations
are never alive together with the other chunks'.
"""
from __future__ import annotations

import torch

from tr0n_rt.settings import HPARAM_NAMES

from .energy import Energy

ADAM_BETAS = (0.9, 0.999)
CLIP_EPS = 1e-6  # as torch.nn.utils.clip_grad_norm_
# Backpropagate GRAD_SCALE * E and divide the gradients by it afterwards (exact for a power of two in
# float32): in FP16 engines this lifts small gradients out of the subnormal range, as loss scaling does
# in mixed-precision training.
GRAD_SCALE = 1024.0



def mix(means: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """means, logits [B, K, D] -> z' [B, D] = sum_k softmax_k(logits) * means."""
    return (torch.softmax(logits, dim=1) * means).sum(dim=1)


def clip_per_sample(g: torch.Tensor, max_norm: torch.Tensor) -> torch.Tensor:
    """Scales each sample's gradient g[b] to norm <= max_norm (clip_grad_norm_ per sample)."""
    norm = g.flatten(1).norm(dim=1).reshape(-1, *([1] * (g.ndim - 1)))
    return g * torch.clamp(max_norm / (norm + CLIP_EPS), max=1.0)


def energy_and_grads(energy: Energy, means, logits, condition, aug_noise, aesthetic_weight=None):
    """E [B] and dE/dmeans, dE/dlogits, computed with autograd (traceable by make_fx)."""
    with torch.enable_grad():
        means = means.detach().requires_grad_(True)
        logits = logits.detach().requires_grad_(True)
        e = energy(mix(means, logits), condition, aug_noise, aesthetic_weight)
        scale = grad_scale(energy, aesthetic_weight)
        g_means, g_logits = torch.autograd.grad(e.sum() * scale, (means, logits))
    return e.detach(), g_means / scale, g_logits / scale


def grad_scale(energy: Energy, aesthetic_weight=None):
    """GRAD_SCALE, or with an aesthetic term GRAD_SCALE / (1 + alpha ||w||): the gradient reaching the
    image embedding is scale * (c + alpha w) (|c| = 1), so this keeps it below GRAD_SCALE in norm, far
    from FP16's 65504 (LAION's heads have ||w|| ~ 10-100, and alpha ~ 1 would overflow)."""
    if aesthetic_weight is None or energy.aesthetic is None:
        return GRAD_SCALE
    return GRAD_SCALE / (1 + aesthetic_weight * energy.aesthetic.weight.norm())


def langevin_step(
    energy: Energy,
    state: dict[str, torch.Tensor],
    condition: torch.Tensor,  # [B, d_c]
    aug_noise: torch.Tensor,  # [B, A, 8] uniform [0, 1)
    sgld_noise: torch.Tensor,  # [B, K, D] standard normal
    hparams: dict[str, torch.Tensor],  # HPARAM_NAMES -> [1]: latent_lr, momentum, noise_std, logits_lr, clip_norm, adam_eps
    bound: float | None = None,
    aesthetic_weight: torch.Tensor | None = None,  # [1] alpha, pipelines with an aesthetic head only
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One step; returns the new state and E [B] at the state it was given.

    alpha is not among the optimizer's hyperparameters: the FP16 converter keeps everything reachable from
    those in float32 (the optimizer), and alpha scales the whole backward of the aesthetic term."""
    e, g_mu, g_pi = energy_and_grads(energy, state["means"], state["logits"], condition, aug_noise,
                                     aesthetic_weight)
    return apply_update(state, g_mu, g_pi, sgld_noise, hparams, bound), e


def apply_update(state: dict[str, torch.Tensor], g_mu: torch.Tensor, g_pi: torch.Tensor, sgld_noise: torch.Tensor,
                 hparams: dict[str, torch.Tensor], bound: float | None = None) -> dict[str, torch.Tensor]:
    """The state after one step from the gradients dE/dmeans, dE/dlogits [B, K, D] (module docstring)."""
    latent_lr, momentum, noise_std, logits_lr, clip_norm, eps = (hparams[n] for n in HPARAM_NAMES)
    g_mu = clip_per_sample(g_mu, clip_norm)
    g_pi = clip_per_sample(g_pi, clip_norm)

    velocity = momentum * state["velocity"] + g_mu
    means = state["means"] - latent_lr * velocity + noise_std * sgld_noise
    if bound is not None:
        means = means.clamp(-bound, bound)

    b1, b2 = ADAM_BETAS
    t = state["step"] + 1
    adam_m = b1 * state["adam_m"] + (1 - b1) * g_pi
    adam_v = b2 * state["adam_v"] + (1 - b2) * g_pi * g_pi
    # eps is an input: the ONNX exporter's optimizer folds a constant `+ 1e-8` away as if it
    # were 0, and then 0 / 0 = NaN wherever a logit gradient is exactly 0 (sample mode, K = 1)
    denom = (adam_v.sqrt() / torch.sqrt(1 - b2**t)) + eps
    logits = state["logits"] - (logits_lr / (1 - b1**t)) * adam_m / denom
    return {"means": means, "logits": logits, "velocity": velocity, "adam_m": adam_m, "adam_v": adam_v, "step": t}


def copies_energy_grad(energy: Energy, images: torch.Tensor, condition: torch.Tensor, aug_noise: torch.Tensor,
                       copies: torch.Tensor, aesthetic_weight: torch.Tensor | None = None):
    """One chunk of the chunked step. images [B, C, H, W] = G(z'), aug_noise [B, m, 8] (this chunk's copies),
    copies [1] = A, the step's copies in all chunks ->
        part [B]          = 1/A sum over the chunk's copies of e_a (e_a = -(score + alpha aesthetic))
        g    [B, C, H, W] = s d(part)/d(images), s = grad_scale (the same loss scale as the step's)
    Summed over the chunks, part is E and g is s dE/dx. The 1/A is applied before the backward, as the
    unchunked step's mean is, so FP16 sees the same magnitudes."""
    with torch.enable_grad():
        images = images.detach().requires_grad_(True)
        part = energy.copy_sum(images, condition, aug_noise, aesthetic_weight) / copies
        (g,) = torch.autograd.grad(part.sum() * grad_scale(energy, aesthetic_weight), (images,))
    return part.detach(), g


def update_from_image_grad(energy: Energy, state: dict[str, torch.Tensor], grad_sum: torch.Tensor,
                           sgld_noise: torch.Tensor, hparams: dict[str, torch.Tensor], bound: float | None = None,
                           aesthetic_weight: torch.Tensor | None = None):
    """The chunked step's last part. grad_sum [B, C, H, W] = s dE/dx at x = G(mix(means, logits)) ->
    (the new state, z'_next [B, D] = mix of the new state: the next step's generator input).
    G's forward is recomputed here, then backpropagated once: dE/dmeans = J^T dE/dx (the VJP)."""
    scale = grad_scale(energy, aesthetic_weight)
    with torch.enable_grad():
        means = state["means"].detach().requires_grad_(True)
        logits = state["logits"].detach().requires_grad_(True)
        images = energy.generator(mix(means, logits))
        g_mu, g_pi = torch.autograd.grad(images, (means, logits), grad_outputs=grad_sum)
    new = apply_update(state, g_mu / scale, g_pi / scale, sgld_noise, hparams, bound)
    return new, mix(new["means"], new["logits"])


def initial_state(means: torch.Tensor, logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """means [B, K, D], per-component logits [B, K] -> a fresh state (logits copied per dimension)."""
    logits = logits[:, :, None].expand_as(means).contiguous()
    zeros = torch.zeros_like(means)
    return {"means": means, "logits": logits, "velocity": zeros, "adam_m": zeros, "adam_v": zeros.clone(),
            "step": torch.zeros(1, dtype=means.dtype, device=means.device)}
