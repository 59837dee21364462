"""The chunked step (generator, energy_grad per chunk of copies, update) equals the one-graph step."""
import pytest
import torch
from tr0n_rt.export.augment import AugmentConfig
from tr0n_rt.export.energy import AestheticHead, Energy
from tr0n_rt.export.models.registry import build_condition_model, build_generator
from tr0n_rt.export.step import (
    copies_energy_grad,
    initial_state,
    langevin_step,
    mix,
    update_from_image_grad,
)

from tr0n_rt.settings import SamplingConfig

from .conftest import TINY_CLIP

HP = {n: torch.from_numpy(v) for n, v in SamplingConfig().hparams().items()}


def tiny_energy(aesthetic: bool):
    torch.manual_seed(0)
    g = build_generator("dcgan", {"latent_dim": 8, "image_size": 16, "channels": 3, "width": 8}).eval()
    f = build_condition_model("open_clip", {"model_cfg": TINY_CLIP}).eval()
    head = AestheticHead(16) if aesthetic else None
    for m in (g, f, head):
        if m is not None:
            m.requires_grad_(False)
    return Energy(g, f, AugmentConfig(), head)


def chunked_step(energy, state, c, aug, noise, chunk, bound=None, alpha=None):
    """The runtime's sequence on torch tensors: x = G(z'), the copies in chunks, then the update."""
    images = energy.generator(mix(state["means"], state["logits"]))
    a = aug.shape[1]
    grad_sum, energy_sum = torch.zeros_like(images), torch.zeros(images.shape[0])
    for start in range(0, a, chunk):
        part, g = copies_energy_grad(energy, images, c, aug[:, start:start + chunk], torch.tensor([float(a)]), alpha)
        grad_sum, energy_sum = grad_sum + g, energy_sum + part
    new, latent = update_from_image_grad(energy, state, grad_sum, noise, HP, bound, alpha)
    return new, energy_sum, latent


@pytest.mark.parametrize("aesthetic", [False, True])
@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_chunked_step_equals_step(aesthetic, chunk):
    energy = tiny_energy(aesthetic)
    torch.manual_seed(3)
    b, k, d, a = 3, 2, 8, 7
    state = initial_state(torch.randn(b, k, d), torch.randn(b, k))
    c = torch.nn.functional.normalize(torch.randn(b, 16), dim=-1)
    alpha = torch.tensor([0.7]) if aesthetic else None
    for t in range(3):  # a few steps: momentum and Adam state carried
        aug, noise = torch.rand(b, a, 8), torch.randn(b, k, d)
        ref, e_ref = langevin_step(energy, state, c, aug, noise, HP, 2.0, alpha)
        new, e, latent = chunked_step(energy, state, c, aug, noise, chunk, 2.0, alpha)
        torch.testing.assert_close(e, e_ref, rtol=1e-5, atol=1e-6)
        for n in ref:
            torch.testing.assert_close(new[n], ref[n], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(latent, mix(ref["means"], ref["logits"]))
        assert not torch.allclose(ref["means"], state["means"])
        state = ref
