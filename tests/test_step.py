"""The one Langevin step equals the reference code's optimizer loop, per sample."""
import pytest
import torch

from tr0n_rt.export.augment import AugmentConfig
from tr0n_rt.export.energy import Energy
from tr0n_rt.export.models.registry import build_condition_model, build_generator
from tr0n_rt.export.reference_loop import reference_sample
from tr0n_rt.export.step import initial_state, langevin_step, mix
from tr0n_rt.settings import SamplingConfig

from .conftest import TINY_CLIP

HP = SamplingConfig(latent_lr=0.1, momentum=0.99, noise_std=0.01, logits_lr=5e-3, clip_norm=1.0)


@pytest.fixture(scope="module")
def energy():
    torch.manual_seed(0)
    g = build_generator("dcgan", {"latent_dim": 8, "image_size": 16, "channels": 3, "width": 8}).eval()
    f = build_condition_model("open_clip", {"model_cfg": TINY_CLIP}).eval()
    for m in (g, f):
        m.requires_grad_(False)
    return Energy(g, f, AugmentConfig())


@pytest.mark.parametrize("bound", [None, 0.5])
def test_step_equals_reference_optimizer_loop(energy, bound):
    torch.manual_seed(1)
    k, d, steps = 3, 8, 4
    means, logits = torch.randn(1, k, d), torch.randn(1, k)
    c = torch.nn.functional.normalize(torch.randn(1, 16), dim=-1)
    augs = [torch.rand(1, 3, 8) for _ in range(steps)]
    noises = [torch.randn(1, k, d) for _ in range(steps)]
    state = initial_state(means, logits)
    ours = []
    for aug, noise in zip(augs, noises):
        state, e = langevin_step(energy, state, c, aug, noise, {n: torch.from_numpy(v) for n, v in HP.hparams().items()}, bound)
        ours.append(e)
    w, pi, e_ref = reference_sample(energy, means, state_logits(logits, d), c, augs, noises, HP, bound)
    torch.testing.assert_close(torch.stack(ours), e_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state["means"], w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state["logits"], pi, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(state["means"], means)  # the step moved something
    if bound is not None:
        assert state["means"].abs().max() <= bound


def state_logits(logits, d):
    return logits[:, :, None].repeat(1, 1, d)


def test_clipping_and_optimizer_state_are_per_sample(energy):
    torch.manual_seed(2)
    b, k, d = 3, 3, 8
    means, logits = torch.randn(b, k, d) * 2, torch.randn(b, k)
    c = torch.nn.functional.normalize(torch.randn(b, 16), dim=-1)
    augs = [torch.rand(b, 3, 8) for _ in range(3)]
    noises = [torch.randn(b, k, d) for _ in range(3)]
    hp = {n: torch.from_numpy(v) for n, v in HP.hparams().items()}
    batch = initial_state(means, logits)
    for aug, noise in zip(augs, noises):
        batch, _ = langevin_step(energy, batch, c, aug, noise, hp)
    for i in range(b):
        one = initial_state(means[i:i + 1], logits[i:i + 1])
        for aug, noise in zip(augs, noises):
            one, _ = langevin_step(energy, one, c[i:i + 1], aug[i:i + 1], noise[i:i + 1], hp)
        # Adam divides by sqrt(v): float32 rounding of tiny logit gradients shows at ~1e-5
        torch.testing.assert_close(one["means"], batch["means"][i:i + 1], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(one["logits"], batch["logits"][i:i + 1], rtol=1e-4, atol=1e-5)


def test_mix_is_the_per_dimension_softmax_average():
    means = torch.randn(2, 3, 4)
    logits = torch.randn(2, 3, 4)
    w = torch.exp(logits) / torch.exp(logits).sum(1, keepdim=True)
    torch.testing.assert_close(mix(means, logits), (w * means).sum(1))
