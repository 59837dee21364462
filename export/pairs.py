"""TR0N's synthetic pairs (Algorithm 1, step 1): z ~ p(z), x = G(z), c = f(x). No dataset needed.

Pairs are written in shards `pairs-NNNNN.safetensors` ({"z": [S, D], "c": [S, d_c]}, float32) beside an
index `pairs.json`. Shard i depends only on (seed, i): an interrupted run resumes where it stopped, a rerun
with the same settings reproduces the same pairs, and a run can be split by shard range over processes or
machines (`shards=(start, stop)`; every part writes the same pairs.json).

    make_pairs(G, f, 1_000_000, "work/pairs", device="cuda", shards=(0, 123))   # one part of a split run
    spec = pairs_index("work/pairs")            # refuses an index with shards missing, naming them
    for i in range(spec.num_shards):
        z, c = read_shard("work/pairs", i)      # z [S, D], c [S, d_c] float32

Every write is atomic (a temporary file in the folder, renamed into place), so a kill or a full disk never
leaves a truncated shard; a shard found on resume is checked (safetensors header: z and c of the expected
rows and widths) and remade if it does not pass.

Reproducibility: z is drawn on the CPU from the shard's torch.Generator, so the draws are the same on every
device and at every batch size. What the models compute from them is not bit-identical across devices:
c (and the stored latent of a generator whose sample_latent runs a network, StyleGAN2's w = mapping(z))
computed on CUDA differs from CPU in rounding. On the same device and batch size, the same (seed, i) gives
the same bytes.

Storage (float32; the translator trains on float32, and float16 would round every z and c to ~5e-4 relative
for a 2x saving only): `pairs_bytes` gives the size on disk. Measured by writing shards of random data
at the real widths (4096 pairs a shard, 245 shards for 1,000,000 pairs, 168 header bytes each) and
extrapolating, 1,000,000 pairs take
    StyleGAN2 (D = 512) + ViT-B-32 (d_c = 512):                4,096 bytes a pair, 4,096,041,160 bytes (4.10 GB)
    BigGAN-512 (D = 256 = 128 noise + 128 class) + ViT-B-32:  3,072 bytes a pair, 3,072,041,160 bytes (3.07 GB)
Time, StyleGAN2-256 + ViT-B-32 with random weights on 2 CPU threads (Xeon): 0.37 pairs/s at batch 16, 0.33 at
batch 64, so ~31 days for 1,000,000 pairs; G is ~90% of the ~100 GFLOP a pair costs
(benchmarks/flops-vitb32-stylegan2-256.json). Make them on a GPU (device="cuda"), split over machines
(shards=) if need be.

Caption pairs (captioners.py): with a captioner, c is the text embedding of a caption of G(z), k captions
per image (z repeated), drawn from the shard's generator after z; pairs.json then records the captioner,
its nucleus settings and the batch size (which orders the draws), and the shard's metadata its captions.
"""
from __future__ import annotations

import errno
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tr0n_rt.atomic import write_json
from tr0n_rt.backends.torch import check_torch_device
from tr0n_rt.errors import CheckpointError, ConfigError

from .captioners import Captioner, NucleusConfig, caption_pairs
from .checkpoints import load_state, save_state
from .models.base import ConditionModel, Generator

MAKE = "tr0n-rt pairs DIR"  # the command that makes (and resumes) pairs, for messages


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

    @property
    def pairs_per_image(self) -> int:
        return self.captioner["nucleus"]["captions_per_image"] if self.captioner else 1

    @property
    def num_pairs(self) -> int:
        return self.count * self.pairs_per_image

    def shard_images(self, i: int) -> int:
        return min(self.shard_size, self.count - i * self.shard_size)

    def shard_rows(self, i: int) -> int:
        """Pairs in shard i (rows of its z and c)."""
        return self.shard_images(i) * self.pairs_per_image

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
    return Path(folder) / f"pairs-{i:05d}.safetensors"


def _shard_header_bytes(rows: int, latent_dim: int, cond_dim: int) -> int:
    """Bytes before the tensor data of an image-pairs shard: the 8-byte length, then the JSON header as
    safetensors writes it (tensors by name, no spaces), padded with spaces to a multiple of 8."""
    c, z = rows * cond_dim * 4, rows * latent_dim * 4
    header = ('{"__metadata__":{},'
              f'"c":{{"dtype":"F32","shape":[{rows},{cond_dim}],"data_offsets":[0,{c}]}},'
              f'"z":{{"dtype":"F32","shape":[{rows},{latent_dim}],"data_offsets":[{c},{c + z}]}}}}')
    return 8 + -(-len(header) // 8) * 8


def pairs_bytes(count: int, latent_dim: int, cond_dim: int, shard_size: int = 4096) -> int:
    """Size on disk of `count` image pairs (z [count, latent_dim], c [count, cond_dim] float32) in shards
    of shard_size, safetensors headers included; pairs.json (~200 bytes) not counted."""
    full, rest = divmod(count, shard_size)
    total = full * (shard_size * (latent_dim + cond_dim) * 4 + _shard_header_bytes(shard_size, latent_dim, cond_dim))
    if rest:
        total += rest * (latent_dim + cond_dim) * 4 + _shard_header_bytes(rest, latent_dim, cond_dim)
    return total


def _span(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    out, start = [], None
    for k, i in enumerate(indices):
        if start is None:
            start = i
        if k + 1 == len(indices) or indices[k + 1] != i + 1:
            out.append(str(start) if start == i else f"{start}-{i}")
            start = None
    return ", ".join(out)


def _read_index(folder: Path) -> PairsSpec:
    index = folder / "pairs.json"
    if not index.is_file():
        raise CheckpointError(f"{folder} holds no pairs.json: make pairs first: {MAKE}")
    try:
        return PairsSpec(**json.loads(index.read_text()))
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{index} is not a pairs index ({type(e).__name__}: {e}): delete the folder "
                              f"and make the pairs again ({MAKE})") from None


def _shard_problem(path: Path, spec: PairsSpec, i: int) -> str | None:
    """Why shard i's file is not a shard of `spec` (from its header only), or None if it passes."""
    from safetensors import SafetensorError, safe_open

    rows = spec.shard_rows(i)
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            if not {"z", "c"} <= keys:
                return f"it holds {sorted(keys)}, not z and c"
            for name, width in (("z", spec.latent_dim), ("c", spec.cond_dim)):
                s = f.get_slice(name)
                if s.get_dtype() != "F32" or list(s.get_shape()) != [rows, width]:
                    return (f"its {name} is {s.get_dtype()} {list(s.get_shape())}, expected F32 [{rows}, {width}] "
                            "(pairs.json's widths)")
            if spec.captioner is not None and "captions" not in (f.metadata() or {}):
                return "it has no captions"
    except (SafetensorError, OSError, ValueError) as e:  # truncated, not safetensors, unreadable
        return f"it does not open as safetensors ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return None


def pairs_index(folder: str | Path) -> PairsSpec:
    """The index of a complete folder of pairs (pairs.json). Refuses, naming the fix, a folder without
    one, and one whose shards are missing or do not match it (each shard's header is read, not its data)."""
    folder = Path(folder)
    spec = _read_index(folder)
    missing, bad = [], []
    for i in range(spec.num_shards):
        path = shard_path(folder, i)
        if not path.is_file():
            missing.append(i)
        elif (why := _shard_problem(path, spec, i)) is not None:
            bad.append(f"{path.name}: {why}")
    if missing:
        raise CheckpointError(
            f"{folder} lacks {len(missing)} of {spec.num_shards} shards ({_span(missing)}): rerun to resume "
            f"({MAKE}, or make_pairs with the same settings; shards=({missing[0]}, {missing[-1] + 1}) makes just "
            "the range still to make)")
    if bad:
        raise CheckpointError(f"{folder} has {len(bad)} shard(s) that do not match pairs.json ({'; '.join(bad[:3])}"
                              f"{' ...' if len(bad) > 3 else ''}): rerun to resume ({MAKE}), which remakes them")
    return spec


def read_shard(folder: str | Path, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shard i of a folder of pairs: z [S, D], c [S, d_c] float32 (S = spec.shard_rows(i)), checked against
    pairs.json."""
    folder = Path(folder)
    spec = _read_index(folder)
    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < spec.num_shards:
        raise ConfigError(f"shard {i!r} is not one of {folder}'s shards 0..{spec.num_shards - 1}")
    path = shard_path(folder, i)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: rerun to resume ({MAKE}, or make_pairs with the same settings; "
                              f"shards=({i}, {i + 1}) makes just this one)")
    state = load_state(path)  # CheckpointError if unreadable
    z, c, rows = state.get("z"), state.get("c"), spec.shard_rows(i)
    want = {"z": [rows, spec.latent_dim], "c": [rows, spec.cond_dim]}
    got = {k: (None if v is None else (v.dtype, list(v.shape))) for k, v in (("z", z), ("c", c))}
    if any(g != (torch.float32, want[k]) for k, g in got.items()):
        raise CheckpointError(
            f"{path} holds {', '.join(f'{k} {g[0]} {g[1]}' if g else f'no {k}' for k, g in got.items())}, but "
            f"pairs.json says float32 z {want['z']} and c {want['c']}: it was made with other models or settings; "
            f"delete it and rerun to resume ({MAKE}), which remakes it")
    return z, c


def load_pairs(folder: str | Path) -> tuple[torch.Tensor, torch.Tensor, PairsSpec]:
    """All pairs of a folder in memory: z [N, D], c [N, d_c] (for small sets; training reads by shard)."""
    spec = pairs_index(folder)
    shards = [read_shard(folder, i) for i in range(spec.num_shards)]
    return torch.cat([z for z, _ in shards]), torch.cat([c for _, c in shards]), spec


def load_captions(folder: str | Path) -> list[str]:
    """The captions of a folder of caption pairs, in pair order (shard metadata)."""
    from safetensors import safe_open

    folder = Path(folder)
    spec = pairs_index(folder)
    if spec.captioner is None:
        raise ConfigError(f"{folder} holds pairs of image embeddings, which have no captions")
    out = []
    for i in range(spec.num_shards):
        with safe_open(str(shard_path(folder, i)), framework="pt") as f:
            out += json.loads(f.metadata()["captions"])
    return out


def _resolve_device(device, generator: Generator) -> torch.device:
    if device is None:
        p = next(generator.parameters(), None)
        return p.device if p is not None else torch.device("cpu")
    return check_torch_device(torch, device)


def _module_device(m: torch.nn.Module) -> torch.device:
    t = next(m.parameters(), None)
    if t is None:
        t = next(m.buffers(), None)
    return t.device if t is not None else torch.device("cpu")


def _write_error(path: Path, e: OSError, spec: PairsSpec, todo: int) -> CheckpointError:
    full = e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
    need = pairs_bytes(todo * spec.shard_size, spec.latent_dim, spec.cond_dim, spec.shard_size) / 1e9
    fix = (f"the disk is full: free space (this run's {todo} shard(s) still to write take ~{need:.2f} GB)"
           if full else "check that the folder is writable and its disk healthy")
    return CheckpointError(f"cannot write {path} ({e.strerror or e}): {fix}, then rerun to resume ({MAKE}, or "
                           "make_pairs with the same settings); the shards already written are kept")


@torch.no_grad()
def make_pairs(generator: Generator, condition_model: ConditionModel, count: int, folder: str | Path,
               seed: int = 0, shard_size: int = 4096, batch_size: int = 256, progress: bool = True,
               captioner: Captioner | None = None, nucleus: NucleusConfig | None = None,
               tokenizer=None, device: str | torch.device | None = None,
               shards: tuple[int, int] | None = None) -> PairsSpec:
    """Writes `count` pairs into `folder`, skipping shards already there; returns the index.

    device: "cpu", "cuda" or "cuda:N": G and f run there (moved for the call, moved back after); z is
            drawn on the CPU either way. None: where G's weights are.
    shards: (start, stop): make only shards start..stop-1 of the run's spec.num_shards, so that several
            processes or machines can split one run (disjoint ranges; same settings; shards made on CPU and
            on CUDA differ in rounding, see the module docstring). None: all. export/pairs_ray.py spreads
            the shards over a Ray cluster's workers instead.
    With a captioner (and the condition model's tokenizer): `count` images, each captioned
    nucleus.captions_per_image times; c = the text embedding of each caption.

    The progress bar counts pairs of the range (shards already there shown done); its rate and ETA count
    only pairs made by this call. A write error raises CheckpointError; the shards written stay valid."""
    nucleus, provenance = check_pair_args(condition_model, count, shard_size, batch_size, captioner, nucleus,
                                          tokenizer)
    spec = PairsSpec(count, shard_size, seed, generator.latent.dim, condition_model.cond_dim,
                     generator.family, condition_model.family, provenance)
    folder = Path(folder)
    dev = _resolve_device(device, generator)
    start, stop, todo, done = open_run(folder, spec, shards)
    bar = progress_bar(spec, start, stop, done, shards is None, progress)
    homes = (_module_device(generator), _module_device(condition_model))
    generator.to(dev).eval()
    condition_model.to(dev).eval()
    try:
        for k, i in enumerate(todo):
            state, meta = make_shard(generator, condition_model, spec, i, batch_size, dev, bar, captioner, nucleus,
                                     tokenizer)
            write_shard(folder, spec, i, state, meta, len(todo) - k)
    finally:
        bar.close()
        generator.to(homes[0])
        condition_model.to(homes[1])
    return spec


def check_pair_args(condition_model, count, shard_size, batch_size, captioner, nucleus, tokenizer):
    """make_pairs' arguments checked -> (nucleus, provenance: the captioner's, None for image pairs)."""
    for name, v in (("count", count), ("shard_size", shard_size), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name} must be a positive int, got {v!r}")
    if captioner is None:
        if nucleus is not None or tokenizer is not None:
            raise ConfigError("nucleus and tokenizer apply to caption pairs only: pass a captioner too")
        return None, None
    if tokenizer is None:
        raise ConfigError("caption pairs need the condition model's tokenizer (tokenizer_from_dict of the "
                          "pipeline's `tokenizer`, or tr0n_rt.tokenizer.CLIPTokenizer())")
    if not hasattr(condition_model, "encode_text"):
        raise ConfigError(f"caption pairs need a condition model that embeds text (CLIP); "
                          f"{condition_model.family!r} does not")
    nucleus = nucleus or NucleusConfig()
    return nucleus, {**captioner.provenance(nucleus), "batch_size": batch_size}


def open_run(folder: Path, spec: PairsSpec, shards: tuple[int, int] | None) -> tuple[int, int, list[int], int]:
    """Checks the shard range, writes (or checks) the index and finds what is left to make:
    (start, stop, the shards to make, pairs already there). Stale temporaries of killed runs are removed."""
    try:
        start, stop = (0, spec.num_shards) if shards is None else shards
    except (TypeError, ValueError):
        start = stop = None
    if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop <= spec.num_shards):
        raise ConfigError(f"shards={shards!r} is not a range (start, stop) with 0 <= start < stop <= "
                          f"{spec.num_shards} ({spec.count} images in shards of {spec.shard_size})")
    index = folder / "pairs.json"
    if index.is_file():
        try:
            old = json.loads(index.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{index} is not a pairs index ({e}): delete the folder and start again") from None
        if old != spec.to_index():
            raise ConfigError(f"{folder} holds pairs made with other settings ({old}); "
                              f"they are pairs of {PairsSpec.describe(old)} and these would be pairs of "
                              f"{PairsSpec.describe(spec.to_index())}: use another folder or delete this one")
    else:
        try:
            write_json(index, spec.to_index())  # atomic; parts of a split run write the same bytes
        except OSError as e:
            raise _write_error(index, e, spec, stop - start) from e
    todo, done = [], 0
    for i in range(start, stop):
        path = shard_path(folder, i)
        if path.is_file():
            why = _shard_problem(path, spec, i)
            if why is None:
                done += spec.shard_rows(i)
                continue
            print(f"{path}: {why}; remaking it", file=sys.stderr)
        for stale in folder.glob(f".{path.name}.*.part"):  # left by a killed run (atomic_path's temporaries)
            stale.unlink(missing_ok=True)
        todo.append(i)
    return start, stop, todo, done


def progress_bar(spec: PairsSpec, start: int, stop: int, done: int, whole: bool, enabled: bool):
    from tqdm.auto import tqdm

    total = sum(spec.shard_rows(i) for i in range(start, stop))
    label = "pairs" if whole else f"pairs {start}-{stop - 1}"
    return tqdm(total=total, initial=done, desc=label, unit="pair", unit_scale=True, disable=not enabled)


@torch.no_grad()
def make_shard(generator, condition_model, spec: PairsSpec, i: int, batch_size: int, dev, bar=None,
               captioner=None, nucleus=None, tokenizer=None) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Shard i's tensors and metadata, a function of (spec.seed, i, batch size, device) only; the models are
    on `dev` already."""
    rng = torch.Generator().manual_seed(spec.seed * 1_000_003 + i)
    z = generator.sample_latent(spec.shard_images(i), generator=rng)  # [S, D], drawn on the CPU
    if captioner is not None:
        return _caption_shard(generator, condition_model, captioner, nucleus, tokenizer, z, rng, batch_size, dev, bar)
    return _image_shard(generator, condition_model, z, batch_size, dev, bar), None


def write_shard(folder: Path, spec: PairsSpec, i: int, state: dict, meta: dict | None, left: int) -> None:
    """Shard i into place, atomically (a temporary file renamed); left: shards still to write, this one
    included (for the disk-full message)."""
    path = shard_path(folder, i)
    try:
        save_state(state, path, metadata=meta)
    except OSError as e:
        raise _write_error(path, e, spec, left) from e


def _image_shard(generator, condition_model, z, batch_size, dev, bar) -> dict[str, torch.Tensor]:
    """z [S, D] -> {"z": [S, D], "c": [S, d_c]} float32 on the CPU, c computed batch by batch on dev."""
    cs = []
    for start in range(0, z.shape[0], batch_size):
        zb = z[start:start + batch_size].to(dev)
        cs.append(condition_model.encode_images(generator(zb)).float().cpu())
        if bar is not None:
            bar.update(zb.shape[0])
    return {"z": z.float().cpu(), "c": torch.cat(cs)}


def _caption_shard(generator, condition_model, captioner, nucleus, tokenizer, z, rng, batch_size, dev, bar):
    """One shard of caption pairs; captions are drawn from rng batch after batch, in order."""
    zs, cs, captions = [], [], []
    for start in range(0, z.shape[0], batch_size):
        zb = z[start:start + batch_size].to(dev)
        zr, c, caps = caption_pairs(zb, generator(zb), captioner, condition_model, tokenizer, nucleus, rng)
        zs.append(zr.float().cpu())
        cs.append(c.float().cpu())
        captions += caps
        if bar is not None:
            bar.update(len(caps))
    return {"z": torch.cat(zs), "c": torch.cat(cs)}, {"captions": json.dumps(captions)}
