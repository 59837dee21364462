"""The open_clip condition model: real architectures, local weights only, clear errors."""
import pytest
import torch

from tr0n_rt.errors import CheckpointError, UnknownModelError
from tr0n_rt.export.checkpoints import save_state
from tr0n_rt.export.models.clip import OpenClipModel

from .conftest import TINY_CLIP


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(UnknownModelError, match="unknown open_clip model 'ViT-Q-99'.*ViT-B-32"):
        OpenClipModel(model_name="ViT-Q-99")


def test_real_architecture_embeds_generator_images_of_another_size():
    m = OpenClipModel(model_name="ViT-B-32").eval()
    assert m.input_size == 224 and m.cond_dim == 512 and m.context_length == 77
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        c = m.encode_images(images)
    assert c.shape == (2, 512)
    torch.testing.assert_close(c.norm(dim=1), torch.ones(2))


def test_local_checkpoint_round_trip_and_unknown_tag(tmp_path):
    torch.manual_seed(0)
    a = OpenClipModel(model_cfg=TINY_CLIP).eval()
    path = tmp_path / "clip.safetensors"
    save_state(a.state_dict(), path)
    # open_clip's own key names, as open_clip checkpoints have them
    assert any(k.startswith("visual.") for k in a.state_dict())
    b = OpenClipModel(model_cfg=TINY_CLIP)
    from tr0n_rt.export.checkpoints import load_weights

    load_weights(b, path)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    tokens = torch.randint(1, 15, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(b.encode_images(x), a.encode_images(x))
        torch.testing.assert_close(b.encode_text(tokens), a.encode_text(tokens))
    with pytest.raises(UnknownModelError, match="pretrained tag"):
        OpenClipModel.from_pretrained("RN50", "no-such-tag")


def test_missing_cached_weights_never_download(monkeypatch):
    import tr0n_rt.export.models.clip as clip_module

    monkeypatch.setattr(clip_module, "cached_pretrained_file", lambda cfg: None)  # an empty cache
    with pytest.raises(CheckpointError, match="not in the local cache"):
        OpenClipModel.from_pretrained("RN50", "openai")


def test_cached_pretrained_file_finds_hub_and_url_caches(tmp_path):
    from tr0n_rt.export.models.clip import cached_pretrained_file

    snap = tmp_path / "models--laion--CLIP-tiny" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "open_clip_model.safetensors").write_bytes(b"x")
    (tmp_path / "models--laion--CLIP-tiny" / "refs").mkdir()
    (tmp_path / "models--laion--CLIP-tiny" / "refs" / "main").write_text("abc123")
    found = cached_pretrained_file({"hf_hub": "laion/CLIP-tiny/"}, cache_dir=str(tmp_path))
    assert found == snap / "open_clip_model.safetensors"
    assert cached_pretrained_file({"hf_hub": "laion/CLIP-other/"}, cache_dir=str(tmp_path)) is None
    (tmp_path / "RN50.pt").write_bytes(b"x")
    assert cached_pretrained_file({"url": "https://host/x/RN50.pt"}, cache_dir=str(tmp_path)) == tmp_path / "RN50.pt"
