"""Algorithm 1: synthetic pairs (seeded, resumable) and translator training (NLL goes down)."""
import pytest
import torch

from tr0n_rt.errors import CheckpointError, ConfigError
from tr0n_rt.export.models.registry import build_condition_model, build_generator
from tr0n_rt.export.pairs import load_pairs, make_pairs, shard_path
from tr0n_rt.export.train_translator import TrainConfig, noisy, train_translator
from tr0n_rt.export.translator import TranslatorConfig

from .conftest import TINY_CLIP


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    g = build_generator("dcgan", {"latent_dim": 8, "image_size": 16, "channels": 3, "width": 8}).eval()
    f = build_condition_model("open_clip", {"model_cfg": TINY_CLIP}).eval()
    return g, f


def test_pairs_are_seeded_and_consistent(models, tmp_path):
    g, f = models
    spec = make_pairs(g, f, 50, tmp_path / "a", seed=3, shard_size=20, batch_size=8, progress=False)
    assert spec.num_shards == 3
    z, c, _ = load_pairs(tmp_path / "a")
    assert z.shape == (50, 8) and c.shape == (50, 16)
    with torch.no_grad():  # c really is f(G(z))
        torch.testing.assert_close(c[:5], f.encode_images(g(z[:5])), rtol=1e-4, atol=1e-5)
    make_pairs(g, f, 50, tmp_path / "b", seed=3, shard_size=20, progress=False)
    torch.testing.assert_close(load_pairs(tmp_path / "b")[0], z)
    make_pairs(g, f, 50, tmp_path / "c", seed=4, shard_size=20, progress=False)
    assert not torch.allclose(load_pairs(tmp_path / "c")[0], z)


def test_pairs_resume_where_they_stopped(models, tmp_path):
    g, f = models
    make_pairs(g, f, 60, tmp_path, seed=1, shard_size=20, progress=False)
    z_full = load_pairs(tmp_path)[0]
    shard_path(tmp_path, 1).unlink()  # as if interrupted before shard 1 was written
    mtime0 = shard_path(tmp_path, 0).stat().st_mtime_ns
    with pytest.raises(CheckpointError, match="rerun to resume"):
        load_pairs(tmp_path)
    make_pairs(g, f, 60, tmp_path, seed=1, shard_size=20, progress=False)
    assert shard_path(tmp_path, 0).stat().st_mtime_ns == mtime0  # not recomputed
    torch.testing.assert_close(load_pairs(tmp_path)[0], z_full)


def test_pairs_refuse_a_folder_made_with_other_settings(models, tmp_path):
    g, f = models
    make_pairs(g, f, 10, tmp_path, seed=1, shard_size=10, progress=False)
    with pytest.raises(ConfigError, match="other settings"):
        make_pairs(g, f, 10, tmp_path, seed=2, shard_size=10, progress=False)


def test_translator_learns_a_conditional_mixture():
    """z = A c + small noise, two clusters of c: the NLL must fall far below its starting value and
    the translator-only latent must land near A c."""
    torch.manual_seed(0)
    c = torch.nn.functional.normalize(torch.randn(2000, 6), dim=1)
    a = torch.randn(6, 4)
    z = c @ a + 0.05 * torch.randn(2000, 4)
    cfg = TranslatorConfig(cond_dim=6, latent_dim=4, num_components=3)
    model, history = train_translator(z, c, cfg, TrainConfig(epochs=8, batch_size=64, lr=3e-3), progress=False)
    assert history[-1] < history[0] - 5, history
    err = (model.mode(c[:200]) - c[:200] @ a).norm(dim=1).mean()
    assert err < 0.3 * (c[:200] @ a).norm(dim=1).mean(), err


def test_condition_noise_modes():
    c = torch.nn.functional.normalize(torch.randn(4000, 64), dim=1) * 3.0
    rng = torch.Generator().manual_seed(0)
    rel = noisy(c, TrainConfig(condition_noise=0.6, noise_mode="relative"), rng) - c
    torch.testing.assert_close(rel.norm(dim=1).mean(), torch.tensor(0.6 * 3.0), rtol=0.02, atol=0)
    ab = noisy(c, TrainConfig(condition_noise=0.2), rng) - c
    torch.testing.assert_close(ab.std(), torch.tensor(0.2), rtol=0.02, atol=0)
    assert noisy(c, TrainConfig(), rng) is c
