"""TR0N's synthetic pairs (Algorithm 1, step 1): z ~ p(z), x = G(z), c = f(x). No dataset needed.

Pairs are written in shards `pairs-NNNNN.safetensors` ({"z": [S, D], "c": [S, d_c]}) beside an index
`pairs.json`. Shard i depends only on (seed, i), so an interrupted run resumes where it stopped and a
rerun with the same settings reproduces the same pairs.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tr0n_rt.atomic import write_json
from tr0n_rt.errors import CheckpointError, ConfigError

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

    @property
    def num_shards(self) -> int:
        return -(-self.count // self.shard_size)


def shard_path(folder: Path, i: int) -> Path:
    return folder / f"pairs-{i:05d}.safetensors"


@torch.no_grad()
def make_pairs(generator: Generator, condition_model: ConditionModel, count: int, folder: str | Path,
               seed: int = 0, shard_size: int = 4096, batch_size: int = 256, progress: bool = True) -> PairsSpec:
    """Writes `count` pairs into `folder`, skipping shards already there; returns the index."""
    from tqdm.auto import tqdm

    folder = Path(folder)
    spec = PairsSpec(count, shard_size, seed, generator.latent.dim, condition_model.cond_dim,
                     generator.family, condition_model.family)
    index = folder / "pairs.json"
    if index.is_file():
        old = json.loads(index.read_text())
        if old != asdict(spec):
            raise ConfigError(f"{folder} holds pairs made with other settings ({old}); "
                              "use another folder or delete this one")
    else:
        write_json(index, asdict(spec))
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
        cs = []
        for start in range(0, size, batch_size):
            cs.append(condition_model.encode_images(generator(z[start:start + batch_size])))
            bar.update(min(batch_size, size - start))
        save_state({"z": z, "c": torch.cat(cs)}, path)
    bar.close()
    return spec


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
