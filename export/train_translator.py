"""TR0N's translator training (Algorithm 1, step 2): maximise log q(z | c) over synthetic pairs.

Loss = nll_scale * mean_b -log q(z_b | c_b + noise_b), Adam with a per-step cosine schedule and
gradient-norm clipping, as the reference (which uses batch 16, lr 1e-4, 10 epochs on 1M pairs).
Condition noise mimics text embeddings from image embeddings: "absolute" adds N(0, s^2 I) (the
reference: s = 0.2 for StyleGAN2, 0.5 for BigGAN + LAION CLIP); "relative" scales it so that
||noise|| ~ s ||c||. The image translator is the same training with condition_noise = 0.

Two entry points share one training step:
    train_translator(z, c, ...)            pairs in memory (the embedded worlds)
    fit_translator(pairs_dir, out_dir, ...) pairs streamed from shards (export/pairs.py), a held-out
                                           validation split, checkpoints (every epoch, every 10 minutes),
                                           resumable bit for bit

fit_translator's out_dir:
    checkpoint.safetensors     the resume state: model.*, optimizer.<param>.<key>, rng.order, rng.noise
                               tensors; the rest (settings, epoch, step, history, best, Adam's param groups,
                               the scheduler) as JSON in the file's metadata "state". One file, written
                               atomically, so tensors and counters never disagree.
    translator-last.{safetensors,json}  the weights after the last finished epoch  (TranslatorGMM.save layout)
    translator-best.{safetensors,json}  the epoch with the lowest validation NLL   (TranslatorGMM.save layout)
    training.json              the report: settings, per-epoch NLLs and times, best epoch
"""
from __future__ import annotations

import hashlib
import json
import math
import numbers
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tr0n_rt.atomic import write_json
from tr0n_rt.backends.torch import check_torch_device
from tr0n_rt.errors import CheckpointError, ConfigError

from .checkpoints import save_state
from .pairs import PairsSpec, pairs_index, read_shard, shard_path
from .translator import TranslatorConfig, TranslatorGMM


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-4
    grad_clip: float = 1.0
    nll_scale: float = 1e-4
    condition_noise: float = 0.0
    noise_mode: str = "absolute"  # "absolute" | "relative"
    seed: int = 0

    def __post_init__(self):
        if self.noise_mode not in ("absolute", "relative"):
            raise ConfigError(f"noise_mode must be 'absolute' or 'relative', got {self.noise_mode!r}")
        check_numbers(self, wholes={"epochs": 1, "batch_size": 1, "seed": 0},
                      positive=("lr", "nll_scale", "grad_clip"), non_negative=("condition_noise",))


def check_numbers(cfg, wholes: dict[str, int] | None = None, positive=(), non_negative=()) -> None:
    """ConfigError unless cfg's `wholes` are whole numbers >= their minimum (not bool, not 2.5) and the
    other named fields finite numbers > 0 (positive) or >= 0 (non_negative)."""
    for name, minimum in (wholes or {}).items():
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
            raise ConfigError(f"{name} must be a whole number >= {minimum}, got {v!r}")
    for name in (*positive, *non_negative):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0 or (
                name in positive and v == 0):
            raise ConfigError(f"{name} must be a finite number {'> 0' if name in positive else '>= 0'}, got {v!r}")


def noisy(c: torch.Tensor, cfg: TrainConfig, rng: torch.Generator) -> torch.Tensor:
    if cfg.condition_noise == 0:
        return c
    eps = torch.randn(c.shape, generator=rng)
    if cfg.noise_mode == "relative":
        eps = eps * c.norm(dim=1, keepdim=True) / math.sqrt(c.shape[1])
    return c + cfg.condition_noise * eps


# --- the one training step both entry points run -------------------------------------------------
def _optimizer(model: TranslatorGMM, train: TrainConfig, total_steps: int, fused: bool = False):
    """Adam and the per-step cosine schedule. fused: Adam's one-pass kernel, the same update up to rounding
    (fit_translator's; train_translator keeps the for-loop Adam, so the worlds rebuild bit for bit)."""
    opt = torch.optim.Adam(model.parameters(), lr=train.lr, fused=fused or None)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)


def _train_step(model, opt, sched, z: torch.Tensor, c: torch.Tensor, train: TrainConfig) -> torch.Tensor:
    """One Adam step on a batch z [B, D], c [B, d_c] (noise already added); returns the scaled loss."""
    loss = -train.nll_scale * model.log_prob(z, c).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
    opt.step()
    sched.step()
    return loss.detach()


def _steps(model, opt, sched, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], train: TrainConfig,
           noise_rng: torch.Generator, device: torch.device) -> Iterator[tuple[torch.Tensor, int]]:
    """Trains on CPU batches in order; yields (scaled loss, batch size) per step. The condition noise is
    drawn on the CPU from noise_rng before the batch moves to `device`, so every device draws the same."""
    for z, c in batches:
        c = noisy(c, train, noise_rng)
        yield _train_step(model, opt, sched, z.to(device), c.to(device), train), z.shape[0]


def train_translator(z: torch.Tensor, c: torch.Tensor, config: TranslatorConfig, train: TrainConfig,
                     progress: bool = True) -> tuple[TranslatorGMM, list[float]]:
    """z [N, D], c [N, d_c] -> a trained translator and the mean loss of each epoch."""
    from tqdm.auto import tqdm

    torch.manual_seed(train.seed)
    rng = torch.Generator().manual_seed(train.seed)  # one stream: each epoch's order, then its batches' noise
    model = TranslatorGMM(config).train()
    steps_per_epoch = -(-z.shape[0] // train.batch_size)
    opt, sched = _optimizer(model, train, steps_per_epoch * train.epochs)
    history = []
    bar = tqdm(total=steps_per_epoch * train.epochs, desc="translator", disable=not progress)
    for _ in range(train.epochs):
        order = torch.randperm(z.shape[0], generator=rng)
        batches = ((z[idx], c[idx]) for idx in order.split(train.batch_size))
        total = 0.0
        for loss, n in _steps(model, opt, sched, batches, train, rng, torch.device("cpu")):
            total += loss.item() * n
            bar.update(1)
        history.append(total / z.shape[0] / train.nll_scale)
        bar.set_postfix(nll=f"{history[-1]:.2f}")
    bar.close()
    return model.eval(), history


# --- streaming, resumable training on a folder of pair shards ------------------------------------
CHECKPOINT = "checkpoint.safetensors"
REPORT = "training.json"
BEST = "translator-best"
LAST = "translator-last"
CHECKPOINT_FORMAT = 1
VALIDATION_FRACTION = 0.05  # default hold-out: the last ceil(5%) of the shards, at least one of >= 2
VALIDATION_BATCH = 1024
VALIDATION_SEED = 7_919  # validation noise of shard i: Generator(VALIDATION_SEED * (seed + 1) + i)
POSTFIX_EVERY = 50  # steps between progress-bar loss updates (each reads the loss off the device)


def fit_translator(pairs_dir: str | Path, out_dir: str | Path, config: TranslatorConfig, train: TrainConfig,
                   device: str = "cpu", progress: bool = True, validation_shards: int | None = None,
                   stop_after_epoch: int | None = None, checkpoint_steps: int | None = None,
                   checkpoint_minutes: float | None = 10.0) -> dict:
    """Trains a translator on the pairs in pairs_dir, streamed shard by shard, checkpointing into out_dir;
    called again with the same settings it resumes from out_dir's last checkpoint (a finished run returns
    at once). The result is bit-identical to an uninterrupted run on the same machine and device.

    Data: the last `validation_shards` shards (default: ceil(5%), at least 1 when there are >= 2, 0 for a
    single shard) are held out, never trained on. Each epoch visits the training shards in an order drawn
    from a seeded CPU generator, each shard's rows in a permutation drawn from it, and cuts that stream
    into batches of train.batch_size (a batch may span two shards; only an epoch's last may be smaller);
    one shard (plus < batch_size carried rows) is in memory at a time.
    Validation NLL, after every epoch, in nats per pair: `validation_nll` on conditions with the training
    noise, drawn once per held-out shard from a fixed seed (the same draw every epoch: the objective
    trained, measured on unseen pairs; it picks translator-best), and `validation_nll_clean` without noise
    (equal to it when condition_noise = 0, the image translator).
    device: "cpu" or "cuda[:N]"; the model and batches live there, the order and noise generators on the CPU.
    stop_after_epoch: return after that epoch (1-based) is checkpointed, as if interrupted.
    checkpoint_steps, checkpoint_minutes: also checkpoint within an epoch every that many steps, and when that
    many minutes have passed since the last checkpoint (an epoch of 1M pairs takes hours on a CPU); a resume
    from any checkpoint gives the same result.
    Adam runs fused: one pass over the weights, 0.06 s a step at the reference's size (d_c = D = 512, K = 10,
    batch 16, 15.8M weights) on 2 CPU cores instead of 0.135 s for the for-loop Adam train_translator keeps:
    ~6.5 min an epoch per 100k pairs, ~11 h for the reference's 10 epochs on 1M pairs (a quiet machine).

    Returns a dict: finished, epochs_done, epochs, best_epoch, best_validation_nll, history (one dict per
    epoch: epoch, train_nll, validation_nll, validation_nll_clean, lr, seconds), pairs (rows, shards,
    train_rows, train_shards, validation_shards), out_dir; and two TranslatorGMMs on the CPU: `best` (lowest validation
    NLL so far, None while no epoch has a finite one; the last epoch's when nothing is held out) and `model`
    (the last epoch's)."""
    from tqdm.auto import tqdm

    pairs_dir, out_dir = Path(pairs_dir), Path(out_dir)
    dev = check_torch_device(torch, device)
    if stop_after_epoch is not None and stop_after_epoch < 1:
        raise ConfigError(f"stop_after_epoch must be >= 1 (an epoch number), got {stop_after_epoch}")
    if checkpoint_steps is not None and checkpoint_steps < 1:
        raise ConfigError(f"checkpoint_steps must be >= 1, got {checkpoint_steps}")
    if checkpoint_minutes is not None and not checkpoint_minutes > 0:
        raise ConfigError(f"checkpoint_minutes must be > 0 (None: no timed checkpoints), got {checkpoint_minutes}")
    spec, rows = _pairs(pairs_dir)
    if (spec.latent_dim, spec.cond_dim) != (config.latent_dim, config.cond_dim):
        raise ConfigError(f"the pairs in {pairs_dir} have latent {spec.latent_dim} and condition {spec.cond_dim}, "
                          f"the translator maps {config.cond_dim} -> {config.latent_dim}: pass the pairs made for "
                          "this generator and condition model")
    held_out = _validation_split(len(rows), validation_shards)
    train_shards = [i for i in range(len(rows)) if i not in held_out]
    n_train = sum(rows[i] for i in train_shards)
    steps_per_epoch = -(-n_train // train.batch_size)
    settings = _json({"format": CHECKPOINT_FORMAT, "translator": asdict(config), "train": asdict(train),
                      "pairs": {"index": spec.to_index(), "rows": sum(rows), "shard0_sha256": _digest(pairs_dir)},
                      "validation_shards": held_out})

    with torch.random.fork_rng(devices=[]):  # the initial weights of train_translator, global RNG untouched
        torch.manual_seed(train.seed)
        model = TranslatorGMM(config)
    model = model.to(dev).train()
    opt, sched = _optimizer(model, train, steps_per_epoch * train.epochs, fused=True)
    order_rng = torch.Generator().manual_seed(train.seed + 1)  # shard order and row permutations
    noise_rng = torch.Generator().manual_seed(train.seed)  # condition noise, batch after batch
    state = {"epoch": 0, "step": 0, "total": 0.0, "history": [], "best_epoch": None, "best_nll": None}
    checkpoint = out_dir / CHECKPOINT
    if checkpoint.is_file():
        state = _restore(checkpoint, settings, model, opt, sched, order_rng, noise_rng, out_dir)

    def result() -> dict:
        out = _report(state, settings, train, rows, train_shards, held_out, out_dir)
        out["model"] = _cpu_copy(model)
        if held_out and state["best_epoch"] is not None:
            out["best"] = TranslatorGMM.load(out_dir, BEST)
        elif not held_out:
            out["best"] = out["model"]
        else:
            out["best"] = None
        return out

    saved_at = time.monotonic()

    def save(epoch_order_state: torch.Tensor) -> None:
        nonlocal saved_at
        _save_checkpoint(checkpoint, model, opt, sched, epoch_order_state, noise_rng, {"settings": settings, **state})
        saved_at = time.monotonic()

    def due() -> bool:
        if state["step"] >= steps_per_epoch:  # the epoch's end checkpoints anyway
            return False
        return bool(checkpoint_steps and state["step"] % checkpoint_steps == 0) or bool(
            checkpoint_minutes and time.monotonic() - saved_at >= 60 * checkpoint_minutes)

    stop = train.epochs if stop_after_epoch is None else min(stop_after_epoch, train.epochs)
    bar = tqdm(total=steps_per_epoch * train.epochs, initial=state["epoch"] * steps_per_epoch + state["step"],
               desc="translator", unit="batch", disable=not progress)
    try:
        while state["epoch"] < stop:
            epoch = state["epoch"] + 1
            bar.set_description(f"translator epoch {epoch}/{train.epochs}")
            tick = time.perf_counter()
            epoch_order_state = order_rng.get_state()  # a mid-epoch checkpoint redraws this epoch's order from it
            total = torch.tensor(state["total"], dtype=torch.float64, device=dev)  # sum_b B * scaled loss
            batches = _shard_batches(pairs_dir, train_shards, rows, train.batch_size, order_rng,
                                     skip_rows=state["step"] * train.batch_size)
            for loss, n in _steps(model, opt, sched, batches, train, noise_rng, dev):
                total += loss.double() * n
                state["step"] += 1
                bar.update(1)
                if state["step"] % POSTFIX_EVERY == 0:
                    seen = min(state["step"] * train.batch_size, n_train)
                    bar.set_postfix(nll=f"{total.item() / seen / train.nll_scale:.2f}", refresh=False)
                if due():
                    state["total"] = total.item()
                    save(epoch_order_state)
            entry = {"epoch": epoch, "train_nll": total.item() / n_train / train.nll_scale}
            entry.update(_validation_nll(model, pairs_dir, held_out, train, dev))
            entry["lr"] = opt.param_groups[0]["lr"]
            entry["seconds"] = round(time.perf_counter() - tick, 3)
            val = entry["validation_nll"]
            if val is not None and math.isfinite(val) and (state["best_nll"] is None or val < state["best_nll"]):
                state["best_epoch"], state["best_nll"] = epoch, val
                model.save(out_dir, BEST)
            model.save(out_dir, LAST)
            state.update(epoch=epoch, step=0, total=0.0, history=state["history"] + [entry])
            save(order_rng.get_state())
            write_json(out_dir / REPORT, _report(state, settings, train, rows, train_shards, held_out, out_dir))
            if progress:
                bar.write(f"translator epoch {epoch}/{train.epochs}: train NLL {entry['train_nll']:.3f}"
                          + (f", validation NLL {val:.3f}" if val is not None else "")
                          + (" (best)" if state["best_epoch"] == epoch else ""))
            if val is not None:
                bar.set_postfix(nll=f"{entry['train_nll']:.2f}", val=f"{val:.2f}")
    finally:
        bar.close()
    if state["epoch"] == train.epochs and held_out and state["best_epoch"] is None:
        raise CheckpointError(
            f"no epoch reached a finite validation NLL ({[h['validation_nll'] for h in state['history']]}): the "
            f"held-out pairs (shards {held_out} of {pairs_dir}) hold non-finite values or training diverged "
            f"(train NLL {[h['train_nll'] for h in state['history']]}): remake the pairs or lower lr, then delete "
            f"{out_dir} to start over")
    model.eval()
    return result()


def _pairs(folder: Path) -> tuple[PairsSpec, list[int]]:
    """The folder's index (every shard present and matching it) and the rows of each shard."""
    spec = pairs_index(folder)
    return spec, [spec.shard_rows(i) for i in range(spec.num_shards)]


def _digest(folder: Path) -> str:
    """sha256 of shard 0's file: tells pairs made by other weights under the same pairs.json apart."""
    h = hashlib.sha256()
    with open(shard_path(folder, 0), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _validation_split(num_shards: int, count: int | None) -> list[int]:
    """The held-out shard indices: the last `count` (default ceil(5%), >= 1 of >= 2 shards, 0 of 1)."""
    if count is None:
        count = max(1, math.ceil(VALIDATION_FRACTION * num_shards)) if num_shards >= 2 else 0
    if not 0 <= count < num_shards:
        raise ConfigError(f"validation_shards must be in [0, {num_shards - 1}] for {num_shards} shards (at least "
                          f"one shard must be left to train on), got {count}")
    return list(range(num_shards - count, num_shards))


def _shard_batches(folder: Path, shards: list[int], rows: list[int], batch_size: int, order_rng: torch.Generator,
                   skip_rows: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch's batches (z [B, D], c [B, d_c]): the shards in the order randperm(len(shards)), shard i's
    rows in the order randperm(rows[i]) (drawn when its turn comes), the stream cut every batch_size rows.
    The first skip_rows rows of the stream are skipped: shards wholly inside them are not read, but their
    permutations are still drawn, so a resumed epoch continues the same stream."""
    carry: tuple[torch.Tensor, torch.Tensor] | None = None  # < batch_size rows from the previous shard
    start = 0  # the stream position of the current shard's first row
    for j in torch.randperm(len(shards), generator=order_rng).tolist():
        i = shards[j]
        perm = torch.randperm(rows[i], generator=order_rng)
        start, first = start + rows[i], start
        if start <= skip_rows:
            continue
        z, c = read_shard(folder, i)
        perm = perm[max(0, skip_rows - first):]
        at = 0
        if carry is not None:
            take = perm[:batch_size - carry[0].shape[0]]
            at = take.shape[0]
            carry = torch.cat([carry[0], z[take]]), torch.cat([carry[1], c[take]])
            if carry[0].shape[0] < batch_size:
                continue
            yield carry
            carry = None
        while at + batch_size <= perm.shape[0]:
            idx = perm[at:at + batch_size]
            yield z[idx], c[idx]
            at += batch_size
        if at < perm.shape[0]:
            carry = z[perm[at:]], c[perm[at:]]
    if carry is not None:
        yield carry


@torch.no_grad()
def _validation_nll(model: TranslatorGMM, folder: Path, shards: list[int], train: TrainConfig,
                    device: torch.device) -> dict:
    """Mean -log q(z | c) over the held-out shards, in nats per pair: with the training noise (a fixed draw
    per shard) and without; None without held-out shards."""
    if not shards:
        return {"validation_nll": None, "validation_nll_clean": None}
    model.eval()
    clean = torch.zeros((), dtype=torch.float64, device=device)
    with_noise = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for i in shards:
        z, c = read_shard(folder, i)
        c_noisy = noisy(c, train, torch.Generator().manual_seed(VALIDATION_SEED * (train.seed + 1) + i))
        for s in range(0, z.shape[0], VALIDATION_BATCH):
            zb = z[s:s + VALIDATION_BATCH].to(device)
            clean -= model.log_prob(zb, c[s:s + VALIDATION_BATCH].to(device)).double().sum()
            if train.condition_noise:
                with_noise -= model.log_prob(zb, c_noisy[s:s + VALIDATION_BATCH].to(device)).double().sum()
        count += z.shape[0]
    model.train()
    clean_nll = clean.item() / count
    return {"validation_nll": with_noise.item() / count if train.condition_noise else clean_nll,
            "validation_nll_clean": clean_nll}


def _save_checkpoint(path: Path, model, opt, sched, order_state: torch.Tensor, noise_rng: torch.Generator,
                     state: dict) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_state = opt.state_dict()
    for p, entries in opt_state["state"].items():
        for key, value in entries.items():
            tensors[f"optimizer.{p}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors["rng.order"] = order_state
    tensors["rng.noise"] = noise_rng.get_state()
    meta = {**state, "optimizer_groups": opt_state["param_groups"], "scheduler": sched.state_dict()}
    save_state(tensors, path, metadata={"state": json.dumps(meta)})


def _restore(path: Path, settings: dict, model, opt, sched, order_rng, noise_rng, out_dir: Path) -> dict:
    """Loads path's state into the model, optimizer, scheduler and generators; returns the counters."""
    from safetensors import SafetensorError, safe_open

    start_over = (f"delete {out_dir} to start over (tr0n-rt train --pipeline: that is DIR/training/NAME), or "
                  "resume with the settings it was started with (e.g. the same --epochs)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["state"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - a safetensors file, not a dict
    except (SafetensorError, OSError, ValueError, KeyError) as e:  # not safetensors, truncated, no state
        raise CheckpointError(f"cannot read the training checkpoint {path} ({type(e).__name__}: {e}): "
                              f"{start_over}") from None
    old = meta.get("settings", {})
    if old != settings:
        changes = _differences(old, settings)
        raise ConfigError(f"{out_dir} holds a translator training run with other settings ({'; '.join(changes[:6])}"
                          f"{' ...' if len(changes) > 6 else ''}): {start_over}")
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    opt_state: dict = {"state": {}, "param_groups": meta["optimizer_groups"]}
    for group in opt_state["param_groups"]:
        group["betas"] = tuple(group["betas"])
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, p, name = key.split(".", 2)
            opt_state["state"].setdefault(int(p), {})[name] = value
    opt.load_state_dict(opt_state)
    sched.load_state_dict(meta["scheduler"])
    order_rng.set_state(tensors["rng.order"])
    noise_rng.set_state(tensors["rng.noise"])
    return {k: meta[k] for k in ("epoch", "step", "total", "history", "best_epoch", "best_nll")}


def _report(state: dict, settings: dict, train: TrainConfig, rows: list[int], train_shards: list[int],
            held_out: list[int], out_dir: Path) -> dict:
    return {
        "finished": state["epoch"] == train.epochs,
        "epochs_done": state["epoch"],
        "epochs": train.epochs,
        "best_epoch": state["best_epoch"] if held_out else (state["epoch"] or None),
        "best_validation_nll": state["best_nll"],
        "history": state["history"],
        "pairs": {"rows": sum(rows), "shards": len(rows), "train_rows": sum(rows[i] for i in train_shards),
                  "train_shards": len(train_shards), "validation_shards": held_out},
        "settings": {k: settings[k] for k in ("translator", "train")},
        "out_dir": str(out_dir),
    }


def _cpu_copy(model: TranslatorGMM) -> TranslatorGMM:
    copy = TranslatorGMM(model.config)
    copy.load_state_dict({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
    return copy.eval()


def _json(obj):
    """obj as JSON would give it back (tuples as lists), to compare with a stored copy."""
    return json.loads(json.dumps(obj))


def _differences(old, new, where: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in list(old) + [k for k in new if k not in old]:
            out += _differences(old.get(key), new.get(key), f"{where}.{key}" if where else str(key))
        return out
    if old == new:
        return []
    return [f"{where or 'settings'}: {_short(old)} -> {_short(new)}"]


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
