"""Captioners for TR0N's caption pairs: c = f_text(caption(G(z))) instead of c = f_image(G(z)).

The paper's alternative to condition noise (Section 3; the reference captions G(z) with BLIP, nucleus
sampling top_p 0.9, 5 to 20 tokens, repetition penalty 1.1, one caption per image): the translator then
learns from text embeddings, the modality it is conditioned on at sampling time.

    captioner = build_captioner("shapes_attributes", {"weights": "shapes-captioner.safetensors"})  # captioner_registry
    captions = captioner.caption(images, rng, NucleusConfig(top_p=0.9))   # images [N, 3, H, W] in [-1, 1]
    z_rep, c, captions = caption_pairs(z, images, captioner, clip, tokenizer, NucleusConfig(), rng)

A captioner is any `Captioner` subclass listed by name in captioner_registry.py; pairs.py records its name, config and
nucleus settings in pairs.json so caption pairs of another provenance are never mixed in.
"""
from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from tr0n_rt.errors import CheckpointError, ConfigError, ShapeError


@dataclass(frozen=True)
class NucleusConfig:
    """How a captioner draws its words.

    sample:             True = nucleus sampling; False = the most probable choice (greedy / argmax).
    top_p:              sample from the smallest set of choices whose probability mass is >= top_p.
    temperature:        logits are divided by it before the softmax (> 1 flattens, < 1 sharpens).
    captions_per_image: captions drawn per image; each becomes a pair with the image's z.
    min_length, max_length, repetition_penalty, num_beams: token-level captioners (BLIP) only, with
                        HF `generate`'s meaning (lengths in tokens, prompt included); num_beams applies
                        when sample is False. Attribute captioners ignore them.
    Defaults are the reference's BLIP settings.
    """

    sample: bool = True
    top_p: float = 0.9
    temperature: float = 1.0
    captions_per_image: int = 1
    min_length: int = 5
    max_length: int = 20
    repetition_penalty: float = 1.1
    num_beams: int = 1

    def __post_init__(self):
        if not isinstance(self.sample, bool):
            raise ConfigError(f"sample must be True or False, got {self.sample!r}")
        for name in ("captions_per_image", "min_length", "max_length", "num_beams"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{name} must be an int, got {v!r}")
        for name in ("top_p", "temperature", "repetition_penalty"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
                raise ConfigError(f"{name} must be a number, got {v!r}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}; 1 samples from the full distribution")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}; use sample=False for argmax")
        if self.captions_per_image < 1:
            raise ConfigError(f"captions_per_image must be >= 1, got {self.captions_per_image}")
        if not self.sample and self.captions_per_image > 1:
            raise ConfigError(f"greedy decoding (sample=False) gives the same caption every time: set sample=True "
                              f"or captions_per_image=1 (got {self.captions_per_image})")
        if self.min_length < 0 or self.max_length < 1 or self.min_length > self.max_length:
            raise ConfigError(f"need 0 <= min_length <= max_length and max_length >= 1, got "
                              f"min_length={self.min_length}, max_length={self.max_length}")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty must be > 0 (1 = none), got {self.repetition_penalty}")
        if self.num_beams < 1:
            raise ConfigError(f"num_beams must be >= 1, got {self.num_beams}")

    def to_dict(self) -> dict:
        return asdict(self)


def nucleus_probs(logits: torch.Tensor, top_p: float, temperature: float = 1.0) -> torch.Tensor:
    """logits [N, V] -> probabilities [N, V] of the nucleus: softmax(logits / temperature) restricted to the
    smallest set of choices, most probable first, whose mass is >= top_p, then renormalised."""
    p = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_p, order = p.sort(dim=-1, descending=True, stable=True)
    before = sorted_p.cumsum(-1) - sorted_p          # mass of the more probable choices
    keep_sorted = before < top_p                     # the most probable choice is always kept
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    p = p * keep
    return p / p.sum(-1, keepdim=True)


def sample_choices(logits: torch.Tensor, nucleus: NucleusConfig, rng: torch.Generator) -> torch.Tensor:
    """logits [N, V] -> chosen indices [N]: nucleus samples, or the argmax when nucleus.sample is False."""
    if not nucleus.sample:
        return logits.argmax(-1)
    probs = nucleus_probs(logits, nucleus.top_p, nucleus.temperature)
    return torch.multinomial(probs, 1, generator=rng).squeeze(-1)


class Captioner(ABC):
    """images [N, 3, H, W] in [-1, 1] -> captions, N * captions_per_image strings, image-major
    (the captions of image i are at i * k ... i * k + k - 1)."""

    name: str = ""  # its name in captioner_registry.CAPTIONERS

    @abstractmethod
    def caption(self, images: torch.Tensor, rng: torch.Generator,
                nucleus: NucleusConfig | None = None) -> list[str]:
        """Draws every random choice from rng, so the same rng state gives the same captions."""

    @abstractmethod
    def config(self) -> dict:
        """JSON-able description: the registry's constructor keyword arguments, plus whatever tells two
        captioners apart (a weights fingerprint). Recorded in pairs.json."""

    def provenance(self, nucleus: NucleusConfig) -> dict:
        return {"name": self.name, "config": self.config(), "nucleus": nucleus.to_dict()}


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """First 16 hex digits of a sha256 over a state dict's names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k].detach().contiguous().cpu()
        h.update(f"{k}:{v.dtype}:{tuple(v.shape)}".encode())
        h.update(v.numpy().tobytes() if v.dtype != torch.bfloat16 else v.float().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def embed_captions(condition_model, tokenizer, captions: list[str]) -> torch.Tensor:
    """captions -> c [N, cond_dim]: the condition model's text embedding, unit norm."""
    if not hasattr(condition_model, "encode_text"):
        raise ConfigError(f"caption pairs need a condition model that embeds text (CLIP); "
                          f"{type(condition_model).__name__} does not")
    tokens = torch.from_numpy(tokenizer(captions))
    device = next(condition_model.parameters()).device
    return F.normalize(condition_model.encode_text(tokens.to(device)).float(), dim=-1).cpu()


@torch.no_grad()
def caption_pairs(z: torch.Tensor, images: torch.Tensor, captioner: Captioner, condition_model, tokenizer,
                  nucleus: NucleusConfig, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """z [N, D] and images = G(z) [N, 3, H, W] -> (z repeated per caption [N*k, D], c [N*k, d_c], captions).
    One pair per caption; k = nucleus.captions_per_image."""
    captions = captioner.caption(images, rng, nucleus)
    k = nucleus.captions_per_image
    if len(captions) != z.shape[0] * k:
        raise ShapeError(f"{captioner.name} gave {len(captions)} captions for {z.shape[0]} images x {k}: "
                         "a captioner returns captions_per_image captions per image, image-major")
    return z.repeat_interleave(k, 0), embed_captions(condition_model, tokenizer, captions), captions


class CaptionerUnavailable(ConfigError, ImportError):
    """A captioner's optional dependency is not installed (catch it as ConfigError or ImportError)."""


class BlipCaptioner(Captioner):
    """BLIP image captioning through Hugging Face transformers, as the reference captions G(z).

    model: a local folder holding a BlipForConditionalGeneration checkpoint and its BlipProcessor
    (`save_pretrained` of e.g. Salesforce/blip-image-captioning-large, made on a connected machine).
    Loaded with local_files_only=True: this never downloads. prompt: the caption's opening words,
    stripped from the result ("a picture of " in the reference). Images are resized (bicubic) to the
    processor's size and normalised with its mean/std, in torch.
    """

    name = "blip"

    def __init__(self, model: str, prompt: str = "a picture of ", device: str = "cpu"):
        try:
            from transformers import BlipForConditionalGeneration, BlipProcessor
        except ImportError as e:
            raise CaptionerUnavailable(
                f"captioner 'blip' needs Hugging Face transformers ({e}): `pip install transformers`, then give "
                "a local folder with a BLIP captioning checkpoint (save_pretrained of "
                "BlipForConditionalGeneration and BlipProcessor)"
            ) from None
        try:
            self.processor = BlipProcessor.from_pretrained(model, local_files_only=True)
            self.model = BlipForConditionalGeneration.from_pretrained(model, local_files_only=True)
        except OSError as e:
            raise CheckpointError(
                f"{model} is not a local BLIP captioning checkpoint ({str(e).splitlines()[0]}); on a connected "
                "machine run BlipForConditionalGeneration.from_pretrained(NAME).save_pretrained(DIR) and "
                "BlipProcessor.from_pretrained(NAME).save_pretrained(DIR), then pass DIR"
            ) from None
        self.model = self.model.eval().requires_grad_(False).to(device)
        self.model_path, self.prompt = str(model), prompt
        ip = self.processor.image_processor
        self.size = (int(ip.size["height"]), int(ip.size["width"]))
        self.mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(ip.image_std).view(1, 3, 1, 1)

    def config(self) -> dict:
        return {"model": self.model_path, "prompt": self.prompt}

    @torch.no_grad()
    def caption(self, images, rng, nucleus=None):
        nucleus = nucleus or NucleusConfig()
        device = self.model.device
        x = F.interpolate((images.float().clamp(-1, 1) + 1) / 2, size=self.size, mode="bicubic",
                          align_corners=False).clamp(0, 1)
        x = x.to(device)  # G may run on another device than BLIP
        pixels = (x - self.mean.to(device)) / self.std.to(device)
        prompt = self.processor.tokenizer([self.prompt] * images.shape[0], return_tensors="pt").to(device)
        kwargs = {"max_length": nucleus.max_length, "min_length": nucleus.min_length,
                  "repetition_penalty": nucleus.repetition_penalty}
        if nucleus.sample:
            kwargs.update(do_sample=True, top_p=nucleus.top_p, temperature=nucleus.temperature,
                          num_return_sequences=nucleus.captions_per_image)
        else:
            kwargs.update(do_sample=False, num_beams=nucleus.num_beams)
        # generate() samples from the global RNG: seed it from rng, inside a fork so nothing else moves
        seed = int(torch.randint(0, 2**62, (1,), generator=rng))
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            out = self.model.generate(pixel_values=pixels, input_ids=prompt.input_ids,
                                      attention_mask=prompt.attention_mask, **kwargs)
        head = self.prompt.strip()
        return [t[len(head):].strip() if t.startswith(head) else t.strip()
                for t in self.processor.batch_decode(out, skip_special_tokens=True)]


__all__ = ["BlipCaptioner", "Captioner", "CaptionerUnavailable", "NucleusConfig",
           "caption_pairs", "embed_captions", "nucleus_probs", "sample_choices"]
