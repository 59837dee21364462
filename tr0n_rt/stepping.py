"""One Langevin step on a backend, as a memory plan says (tr0n_rt/memory.py): the step graph, or the
chunked step. Both compute the same function (export/step.py); the chunked one's memory does not grow
with the copies A.

Chunked step, per step t (docs/bundle-format.md, "The chunked step"):
    x = generator(z')                                  z' = the state's mixed latent [B, D]
    grad_sum, energy_sum = 0 [B, C, H, W], 0 [B]
    for each chunk j (copies j m .. min((j + 1) m, A) - 1, in order):
        grad_sum, energy_sum = energy_grad(x, c, u[:, chunk j], A, grad_sum, energy_sum)
    state', z'_next = update(state, grad_sum, sgld_noise, hyperparameters)
    E = energy_sum
z' of the first step is mixed on the host (noise.mix); later ones come from `update`.
"""
from __future__ import annotations

import numpy as np

from . import noise
from .graphs import STATE_NAMES


class StepRunner:
    """Runs steps of one sample batch. chunk None: the step graph; else copies per energy_grad run."""

    def __init__(self, backend, chunk: int | None, fixed: dict):
        """fixed: condition, the hyperparameters and (with an aesthetic head) aesthetic_weight, as the
        backend's arrays (the step graph's inputs that do not change between steps)."""
        self.backend, self.chunk, self.fixed = backend, chunk, fixed
        self.latent = None  # z' of the state the next step starts from (chunked only)

    def __call__(self, state: dict, aug: np.ndarray, sgld: np.ndarray) -> tuple[dict, object]:
        """state (STATE_NAMES), aug [B, A, 8], sgld [B, K, D] -> (the next state, E [B] of `state`)."""
        be = self.backend
        if self.chunk is None:
            out = be.run("step", {**state, **self.fixed, "aug_noise": aug, "sgld_noise": sgld})
            return {n: out[f"{n}_next"] for n in STATE_NAMES}, out["energy"]
        if self.latent is None:
            self.latent = be.to_device(noise.mix(be.to_host(state["logits"]), be.to_host(state["means"])))
        state, energy, self.latent = be.chunked_step(state, self.latent, self.fixed, aug, sgld, self.chunk)
        return state, energy


def copies_of(aug, first: int, chunk: int):
    """Copies first .. first + chunk - 1 of aug [B, A, 8], contiguous (numpy, or a backend's tensor)."""
    part = aug[:, first:first + chunk]
    return np.ascontiguousarray(part) if isinstance(part, np.ndarray) else part.contiguous()


def chunked_step(be, state: dict, latent, fixed: dict, aug, sgld, chunk: int, start: dict | None = None):
    """The chunked step (module docstring) on backend `be` -> (the next state, E [B], z'_next [B, D]).
    aug: numpy or the backend's tensors; start: the zero sums and the copies count [1] as the backend's
    arrays (default: made here from numpy; a CUDA-graph capture passes device buffers made beforehand)."""
    b, a = aug.shape[:2]
    if start is None:
        info = be.info
        start = {"grad_sum": be.to_device(np.zeros((b, info.channels, info.image_size, info.image_size), np.float32)),
                 "energy_sum": be.to_device(np.zeros(b, np.float32)),
                 "copies": be.to_device(np.array([a], np.float32))}
    images = be.run("generator", {"latent": latent})["images"]
    alpha = {"aesthetic_weight": fixed["aesthetic_weight"]} if "aesthetic_weight" in fixed else {}
    sums = {"grad_sum": start["grad_sum"], "energy_sum": start["energy_sum"]}
    for first in range(0, a, chunk):
        part = copies_of(aug, first, chunk)
        out = be.run("energy_grad", {"images": images, "condition": fixed["condition"], "aug_noise": part,
                                     "copies": start["copies"], **sums, **alpha})
        sums = {"grad_sum": out["grad_sum_next"], "energy_sum": out["energy_sum_next"]}
    hparams = {n: v for n, v in fixed.items() if n != "condition"}
    out = be.run("update", {**state, **hparams, "grad_sum": sums["grad_sum"], "sgld_noise": sgld})
    return {n: out[f"{n}_next"] for n in STATE_NAMES}, sums["energy_sum"], out["latent_next"]


def chunked_energy(backend, latents: np.ndarray, conditions: np.ndarray, aug: np.ndarray, chunk: int) -> dict:
    """The energy graph over the copies in chunks of `chunk`: E = sum_j (m_j / A) E_j (and the aesthetic
    score likewise), accumulated in float64 in chunk order -> {"energy": [B], "aesthetic": [B] if any}."""
    a = aug.shape[1]
    total: dict[str, np.ndarray] = {}
    for start in range(0, a, chunk):
        part = copies_of(aug, start, chunk)
        out = backend.run("energy", {"latent": latents, "condition": conditions, "aug_noise": part})
        for name, value in out.items():
            total[name] = total.get(name, 0.0) + backend.to_host(value).astype(np.float64) * (part.shape[1] / a)
    return {name: value.astype(np.float32) for name, value in total.items()}
