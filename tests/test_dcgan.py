"""The DCGAN generator family: shapes, range, gradients, config round trip, export-friendly layers."""
import pytest
import torch
from torch import nn

from tr0n_rt.errors import ConfigError, ShapeError
from tr0n_rt.export.models.dcgan import DCGANGenerator
from tr0n_rt.export.models.registry import build_generator


@pytest.mark.parametrize("image_size", [16, 32, 64])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape_and_range(image_size, batch, channels):
    torch.manual_seed(0)
    gen = DCGANGenerator(latent_dim=8, image_size=image_size, channels=channels, width=4).eval()
    with torch.no_grad():
        x = gen(gen.latent.sample_prior(batch))
    assert x.shape == (batch, channels, image_size, image_size)
    assert x.min() >= -1 and x.max() <= 1
    assert x.std() > 0


def test_eval_mode_is_batch_independent():
    # BatchNorm must use running statistics at sampling time, so one latent gives one image whatever its batch.
    torch.manual_seed(0)
    gen = DCGANGenerator(latent_dim=8, image_size=16, width=4).eval()
    z = torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(gen(z[:1]), gen(z)[:1])


def test_gradient_wrt_latent_is_nonzero():
    torch.manual_seed(0)
    gen = DCGANGenerator(latent_dim=8, image_size=32, width=4).eval()
    z = torch.randn(2, 8, requires_grad=True)
    gen(z).square().sum().backward()
    assert z.grad is not None and z.grad.abs().sum(dim=1).min() > 0


def test_config_round_trip_through_registry():
    gen = DCGANGenerator(latent_dim=16, image_size=64, channels=3, width=8)
    again = build_generator("dcgan", gen.config())
    assert type(again) is DCGANGenerator and again.config() == gen.config()
    assert again.latent.dim == 16 and again.family == "dcgan"
    again.load_state_dict(gen.state_dict())  # same layout, same parameter names


def test_only_export_friendly_layers():
    allowed = (nn.Sequential, nn.ConvTranspose2d, nn.BatchNorm2d, nn.ReLU, nn.Tanh)
    gen = DCGANGenerator(latent_dim=8, image_size=64, width=4)
    assert all(isinstance(m, allowed) for m in gen.modules() if m is not gen)


def test_rejects_bad_sizes_and_latents():
    with pytest.raises(ConfigError):
        DCGANGenerator(image_size=24)
    with pytest.raises(ConfigError):
        DCGANGenerator(image_size=8)
    gen = DCGANGenerator(latent_dim=8, image_size=16, width=4)
    with pytest.raises(ShapeError):
        gen(torch.randn(2, 9))
