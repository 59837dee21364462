"""TR0N's synthetic pairs (Algorithm 1, step 1): z ~ p(z), x = G(z), c = f(x). No dataset needed.

Pairs are written in shards `pairs-NNNNN.safetensors` ({"z": [S, D], "c": [S, d_c]}) beside an index
`pairs.json`. Shard i depends only on (seed, i), so an interrupted run resumes where it stopped and a
rerun with the same settings reproduces the same pairs.

Caption pairs (captioners.py): with a captioner, c is the text embedding of a caption of G(z), k captions
per image (z repeated), drawn from the shard's generator after z; pairs.json then records the captioner,
its nucleus settings and the batch size (which orders the draws), and the shard's metadata its captions.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tr0n_rt.atomic import write_json
from tr0n_rt.errors import CheckpointError, ConfigError

from .captioners import Captioner, NucleusConfig, caption_pairs
from .checkpoints import load_state, save_state
from .models.base import ConditionModel, Generator


@dataclass(frozen=True)
class PairsSpec:
    count: int
    shard_size: int
    seed: int
    latent_dim: int
    cond_dim: int
    generator: str  # family names, to refuse mixing pairs of different models
    condition_model: str
    # caption pairs only: {"name", "config", "nucleus", "batch_size"}; count and shard_size then count
    # images, and each shard holds shard_size * captions_per_image pairs
    captioner: dict | None = field(default=None)

    @property
    def num_shards(self) -> int:
        return -(-self.count // self.shard_size)

    def to_index(self) -> dict:
        """pairs.json's content; image pairs keep the index they always had (no captioner key)."""
        d = json.loads(json.dumps(asdict(self)))
        if d["captioner"] is None:
            del d["captioner"]
        return d

    @staticmethod
    def describe(index: dict) -> str:
        cap = index.get("captioner")
        return f"captions by {cap['name']!r}" if cap else "image embeddings"


def shard_path(folder: Path, i: int) -> Path:
    return folder / f"pairs-{i:05d}.safetensors"


@torch.no_grad()
def make_pairs(generator: Generator, condition_model: ConditionModel, count: int, folder: str | Path,
               seed: int = 0, shard_size: int = 4096, batch_size: int = 256, progress: bool = True,
               captioner: Captioner | None = None, nucleus: NucleusConfig | None = None,
               tokenizer=None) -> PairsSpec:
    """Writes `count` pairs into `folder`, skipping shards already there; returns the index.

    With a captioner (and the condition model's tokenizer): `count` images, each captioned
    nucleus.captions_per_image times; c = the text embedding of each caption."""
    from tqdm.auto import tqdm

    folder = Path(folder)
    provenance = None
    if captioner is None:
        if nucleus is not None or tokenizer is not None:
            raise ConfigError("nucleus and tokenizer apply to caption pairs only: pass a captioner too")
    else:
        if tokenizer is None:
            raise ConfigError("caption pairs need the condition model's tokenizer (tokenizer_from_dict of the "
                              "pipeline's `tokenizer`, or tr0n_rt.tokenizer.CLIPTokenizer())")
        if not hasattr(condition_model, "encode_text"):
            raise ConfigError(f"caption pairs need a condition model that embeds text (CLIP); "
                              f"{condition_model.family!r} does not")
        nucleus = nucleus or NucleusConfig()
        provenance = {**captioner.provenance(nucleus), "batch_size": batch_size}
    spec = PairsSpec(count, shard_size, seed, generator.latent.dim, condition_model.cond_dim,
                     generator.family, condition_model.family, provenance)
    index = folder / "pairs.json"
    if index.is_file():
        old = json.loads(index.read_text())
        if old != spec.to_index():
            raise ConfigError(f"{folder} holds pairs made with other settings ({old}); "
                              f"they are pairs of {PairsSpec.describe(old)} and these would be pairs of "
                              f"{PairsSpec.describe(spec.to_index())}: use another folder or delete this one")
    else:
        write_json(index, spec.to_index())
    generator.eval()
    condition_model.eval()
    bar = tqdm(total=count, desc="pairs", unit="pair", disable=not progress)
    for i in range(spec.num_shards):
        size = min(shard_size, count - i * shard_size)
        path = shard_path(folder, i)
        if path.is_file():
            bar.update(size)
            continue
        rng = torch.Generator().manual_seed(seed * 1_000_003 + i)
        z = generator.sample_latent(size, generator=rng)
        if captioner is not None:
            _caption_shard(generator, condition_model, captioner, nucleus, tokenizer, z, rng, batch_size, path, bar)
            continue
        cs = []
        for start in range(0, size, batch_size):
            cs.append(condition_model.encode_images(generator(z[start:start + batch_size])))
            bar.update(min(batch_size, size - start))
        save_state({"z": z, "c": torch.cat(cs)}, path)
    bar.close()
    return spec


def _caption_shard(generator, condition_model, captioner, nucleus, tokenizer, z, rng, batch_size, path, bar):
    """One shard of caption pairs; captions are drawn from rng batch after batch, in order."""
    zs, cs, captions = [], [], []
    for start in range(0, z.shape[0], batch_size):
        zb = z[start:start + batch_size]
        zr, c, caps = caption_pairs(zb, generator(zb), captioner, condition_model, tokenizer, nucleus, rng)
        zs.append(zr)
        cs.append(c)
        captions += caps
        bar.update(zb.shape[0])
    save_state({"z": torch.cat(zs), "c": torch.cat(cs)}, path, metadata={"captions": json.dumps(captions)})


def load_captions(folder: str | Path) -> list[str]:
    """The captions of a folder of caption pairs, in pair order (shard metadata)."""
    from safetensors import safe_open

    folder = Path(folder)
    spec = PairsSpec(**json.loads((folder / "pairs.json").read_text()))
    if spec.captioner is None:
        raise ConfigError(f"{folder} holds pairs of image embeddings, which have no captions")
    out = []
    for i in range(spec.num_shards):
        with safe_open(str(shard_path(folder, i)), framework="pt") as f:
            out += json.loads(f.metadata()["captions"])
    return out


def load_pairs(folder: str | Path) -> tuple[torch.Tensor, torch.Tensor, PairsSpec]:
    """All pairs of a folder: z [N, D], c [N, d_c]."""
    folder = Path(folder)
    index = folder / "pairs.json"
    if not index.is_file():
        raise CheckpointError(f"{folder} holds no pairs.json: make pairs first (tr0n-rt train does)")
    spec = PairsSpec(**json.loads(index.read_text()))
    missing = [i for i in range(spec.num_shards) if not shard_path(folder, i).is_file()]
    if missing:
        raise CheckpointError(f"{folder} lacks {len(missing)} of {spec.num_shards} shards: rerun to resume")
    shards = [load_state(shard_path(folder, i)) for i in range(spec.num_shards)]
    return torch.cat([s["z"] for s in shards]), torch.cat([s["c"] for s in shards]), spec
