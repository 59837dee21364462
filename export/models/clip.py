"""CLIP through open_clip as TR0N's condition model: c = normalised image or text embedding.

Image preprocessing is done in torch and differentiably, as the reference does it: [-1, 1] -> [0, 1]
-> bilinear resize to the encoder's input size (align_corners=False, no antialias) -> CLIP mean/std.
The resize is a product with constant interpolation matrices (out = A x A^T), which exports as
MatMul rather than the index ops whose backward is ScatterND.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from tr0n_rt.errors import CheckpointError, unknown_name

from .base import TextConditionModel

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def bilinear_matrix(src: int, dst: int) -> torch.Tensor:
    """[dst, src] matrix A with A @ x == F.interpolate(x, dst, mode='bilinear', align_corners=False)
    along one axis (no antialias)."""
    o = torch.arange(dst, dtype=torch.float64)
    s = ((o + 0.5) * (src / dst) - 0.5).clamp(0, src - 1)
    i = torch.arange(src, dtype=torch.float64)
    return torch.relu(1 - (s[:, None] - i[None, :]).abs()).float()


class OpenClipModel(TextConditionModel):
    family = "open_clip"
    kind = "clip"

    def __init__(
        self,
        model_name: str | None = None,
        model_cfg: dict | None = None,
        image_mean: tuple[float, ...] = OPENAI_MEAN,
        image_std: tuple[float, ...] = OPENAI_STD,
        source_size: int | None = None,
        quick_gelu: bool = False,
    ):
        """model_name: an open_clip architecture (e.g. 'ViT-B-32'), or model_cfg: the keyword arguments
        of open_clip.CLIP for a custom model. Weights are loaded separately (see from_pretrained).
        source_size: the generator's image size, to precompute the resize matrix (else built lazily).
        quick_gelu: the activation of OpenAI-trained weights (open_clip's pretrained config says which)."""
        super().__init__()
        import open_clip

        if (model_name is None) == (model_cfg is None):
            raise ValueError("give exactly one of model_name or model_cfg")
        if model_name is not None:
            if model_name not in open_clip.list_models():
                raise unknown_name("open_clip model", model_name, open_clip.list_models())
            self.clip = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick_gelu)
        else:
            self.clip = open_clip.CLIP(**model_cfg)
        self.clip.eval()
        self._config = {"model_name": model_name, "model_cfg": model_cfg,
                        "image_mean": list(image_mean), "image_std": list(image_std), "source_size": source_size,
                        "quick_gelu": quick_gelu}
        size = self.clip.visual.image_size
        self.input_size = size[0] if isinstance(size, (tuple, list)) else int(size)
        self.context_length = int(self.clip.context_length)
        self.cond_dim = int(self.clip.text_projection.shape[1]) if hasattr(self.clip, "text_projection") \
            else int(self.clip.visual.output_dim)
        self.register_buffer("mean", torch.tensor(image_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(image_std).view(1, -1, 1, 1), persistent=False)
        self._resize: dict[int, torch.Tensor] = {}
        if source_size:
            self.prepare_for(source_size)

    def config(self) -> dict:
        return dict(self._config)

    def prepare_for(self, src: int) -> None:
        """Precomputes the resize matrix for generator images of side src (call outside any tracing:
        a matrix cached while tracing would be a fake tensor)."""
        self._resize[src] = bilinear_matrix(src, self.input_size)

    def _resize_matrix(self, src: int) -> torch.Tensor:
        return self._resize[src] if src in self._resize else bilinear_matrix(src, self.input_size)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, H] in [-1, 1] -> encoder input [N, 3, S, S], normalised."""
        x = (images + 1) / 2
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            a_h = self._resize_matrix(x.shape[-2]).to(x)
            a_w = self._resize_matrix(x.shape[-1]).to(x)
            x = a_h @ x @ a_w.T
        return (x - self.mean) / self.std

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_image(self.preprocess(images)), dim=-1)

    def image_input(self) -> dict:
        """How a user's image becomes encode_pixels' input (tr0n_rt.images.clip_pixels): the bundle's
        image_input field."""
        return {"size": int(self.input_size), "mean": [float(v) for v in self.mean.flatten()],
                "std": [float(v) for v in self.std.flatten()], "resize": "shortest side, bicubic", "crop": "center"}

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """A user's image, already resized and centre-cropped to the encoder's size as open_clip's eval
        transform does (tr0n_rt.images.clip_pixels): pixels [N, 3, S, S] in [0, 1] -> c [N, cond_dim]."""
        return F.normalize(self.clip.encode_image((pixels - self.mean) / self.std), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_text(tokens), dim=-1)

    def score(self, images: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Cosine similarity [N] between each image's embedding and its condition."""
        return (self.encode_images(images) * F.normalize(c, dim=-1)).sum(-1)

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        # Checkpoints name the open_clip model's own keys ("visual.", "transformer.", ...).
        if state and not any(k.startswith("clip.") for k in state):
            state = {f"clip.{k.removeprefix('module.')}": v for k, v in state.items()}
        return super().load_state_dict(state, strict=strict, assign=assign)

    def state_dict(self, *args, **kwargs):
        return {k.removeprefix("clip."): v for k, v in super().state_dict(*args, **kwargs).items()}

    @classmethod
    def from_pretrained(cls, model_name: str, pretrained: str | os.PathLike, **kwargs) -> "OpenClipModel":
        """model_name + a local checkpoint file (safetensors or a weights-only torch file), or an
        open_clip pretrained tag whose weights are already in the local cache. Never downloads."""
        from ..checkpoints import load_state

        path = Path(pretrained)
        if path.suffix in (".safetensors", ".pt", ".pth", ".bin") or path.exists():
            model = cls(model_name=model_name, **kwargs)
            model.load_state_dict(load_state(path))
            return model.eval()
        import open_clip

        tags = open_clip.list_pretrained_tags_by_model(model_name) if model_name in open_clip.list_models() else []
        if str(pretrained) not in tags:
            raise unknown_name(f"pretrained tag for {model_name}", str(pretrained), tags)
        cfg = open_clip.get_pretrained_cfg(model_name, str(pretrained))
        cached = cached_pretrained_file(cfg)
        if cached is None:
            raise CheckpointError(
                f"open_clip weights {model_name}/{pretrained} are not in the local cache; download them on a "
                "connected machine (open_clip.create_model(..., pretrained=TAG)) or pass a checkpoint file path"
            )
        kwargs.setdefault("quick_gelu", bool(cfg.get("quick_gelu", False)))
        kwargs.setdefault("image_mean", tuple(cfg.get("mean") or OPENAI_MEAN))
        kwargs.setdefault("image_std", tuple(cfg.get("std") or OPENAI_STD))
        model = cls(model_name=model_name, **kwargs)
        model.load_state_dict(load_state(cached))
        return model.eval()


def cached_pretrained_file(cfg: dict, cache_dir: str | None = None) -> Path | None:
    """The local file of an open_clip pretrained config, looked up without any network call."""
    hub = cfg.get("hf_hub") or ""
    if hub:
        from huggingface_hub import try_to_load_from_cache

        # 'org/model/' means open_clip's default file names; 'org/model/file' names the file
        repo, filename = os.path.split(hub)
        for name in [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]:
            found = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
    url = cfg.get("url") or ""
    if url:
        local = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if local.is_file():
            return local
    return None
