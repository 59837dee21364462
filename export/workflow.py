"""The steps after `tr0n-rt create`, on a pipeline folder: synthetic pairs, then the translator.

    make_pipeline_pairs(folder)          folder/pairs/: the recipe's pairs, sharded and resumable
    train_pipeline(folder)               folder/training/translator/: per-epoch checkpoints, resumable;
                                         the best (validation NLL) becomes pipeline.json's translator
    train_pipeline(folder, image=True)   the image translator: the same pairs, no condition noise
    import_translator(folder, file)      a translator trained with the reference code instead

Each reads the recipe from pipeline.json (export/create.py) and checks what it is given against the
pipeline (latent and embedding sizes) before any work.
"""
from __future__ import annotations

from pathlib import Path

from tr0n_rt.errors import CheckpointError, ConfigError
from tr0n_rt.info import PAIRS_DIR, TRAINING_DIR
from tr0n_rt.pipeline_json import read_pipeline_json

from .create import read_recipe
from .models.registry import build_condition_model, build_generator
from .pipeline import load_models, set_translator
from .translator import TranslatorConfig, import_reference_checkpoint


def pipeline_spec(folder: Path) -> dict:
    path = Path(folder) / "pipeline.json"
    if not path.is_file():
        raise ConfigError(f"{folder} holds no pipeline.json: make the pipeline first (`tr0n-rt create {folder} ...`)")
    return read_pipeline_json(folder)


def make_pipeline_pairs(folder, count: int | None = None, batch_size: int = 64, device: str = "cpu",
                        shards: tuple[int, int] | None = None, shard_size: int = 4096, progress: bool = True,
                        captioner: str | None = None, captioner_config: dict | None = None,
                        ray: str | None = None, workers: int | None = None, cpus_per_worker: float = 1.0):
    """folder/pairs: `count` pairs (default: the recipe's), seeded by the recipe; returns the PairsSpec.
    captioner: caption pairs instead (c = the text embedding of a caption of G(z); export/captioners.py),
    by its name in captioner_registry with its config (constructor keyword arguments).
    ray: make the shards on a Ray cluster's workers (export/pairs_ray.py): "auto", HOST:PORT, or "local"
    for a Ray instance on this machine; workers, cpus_per_worker: how many, and their CPU reservation."""
    import torch

    from tr0n_rt.backends.torch import check_torch_device

    from .pairs import make_pairs

    folder = Path(folder)
    spec = pipeline_spec(folder)
    recipe = read_recipe(spec)
    count = count or recipe.pairs
    num_shards = -(-count // shard_size)
    if shards is not None and not 0 <= shards[0] < shards[1] <= num_shards:
        raise ConfigError(f"--shards {shards[0]}:{shards[1]} is outside the {num_shards} shards of {count} pairs "
                          f"in shards of {shard_size}: give START:STOP with 0 <= START < STOP <= {num_shards}")
    if ray is not None:
        from .pairs_ray import make_pairs_on_ray

        return make_pairs_on_ray(folder.resolve(), count, recipe.pairs_seed, batch_size, device, shards, shard_size,
                                 progress, captioner, captioner_config, None if ray == "local" else ray, workers,
                                 cpus_per_worker)
    check_torch_device(torch, device)  # with Ray, each worker checks its own node's devices
    captions = {}
    if captioner is not None:
        from tr0n_rt.tokenizer import tokenizer_from_dict

        from .captioner_registry import build_captioner

        captions = {"captioner": build_captioner(captioner, captioner_config, device=device),
                    "tokenizer": tokenizer_from_dict(spec["tokenizer"])}
    g, f = load_models(folder, spec)  # on the CPU: make_pairs moves them to `device` and back
    return make_pairs(g, f, count, folder / PAIRS_DIR, seed=recipe.pairs_seed, shard_size=shard_size,
                      batch_size=batch_size, device=device, shards=shards, progress=progress, **captions)


def translator_config(spec: dict, recipe) -> TranslatorConfig:
    """The translator a pipeline needs: its condition and latent sizes, the recipe's K and mean bound."""
    g_cfg, f_cfg = spec["generator"], spec["condition_model"]
    g = build_generator(g_cfg["family"], g_cfg.get("config", {}))
    f = build_condition_model(f_cfg["family"], f_cfg.get("config", {}))
    return TranslatorConfig(cond_dim=f.cond_dim, latent_dim=g.latent.dim, num_components=recipe.num_components,
                            mean_bound=recipe.mean_bound)


def train_pipeline(folder, image: bool = False, device: str = "cpu", epochs: int | None = None,
                   progress: bool = True, stop_after_epoch: int | None = None) -> dict:
    """Trains (or resumes training) the pipeline's translator on folder/pairs; the best checkpoint by
    validation NLL goes into pipeline.json. image: the image translator (no condition noise)."""
    from .pairs import pairs_index
    from .train_translator import fit_translator

    folder = Path(folder)
    spec = pipeline_spec(folder)
    recipe = read_recipe(spec)
    if not (folder / PAIRS_DIR / "pairs.json").is_file():
        raise CheckpointError(f"{folder} has no synthetic pairs yet: make them first with `tr0n-rt pairs {folder}`")
    index = pairs_index(folder / PAIRS_DIR)
    config = translator_config(spec, recipe)
    if (index.latent_dim, index.cond_dim) != (config.latent_dim, config.cond_dim):
        raise ConfigError(f"the pairs in {folder / PAIRS_DIR} have latent {index.latent_dim} and condition "
                          f"{index.cond_dim}, this pipeline needs {config.latent_dim} and {config.cond_dim}: "
                          f"delete that folder and rerun `tr0n-rt pairs {folder}`")
    train = recipe.training(epochs=epochs or recipe.epochs,
                            condition_noise=0.0 if image else recipe.condition_noise)
    name = "image_translator" if image else "translator"
    result = fit_translator(folder / PAIRS_DIR, folder / TRAINING_DIR / name, config, train, device=device,
                            progress=progress, stop_after_epoch=stop_after_epoch)
    if result.get("finished", True):
        set_translator(folder, result["best"], name, {k: v for k, v in result.items() if k not in ("best", "model")})
    return result


def import_translator(folder, checkpoint, image: bool = False) -> dict:
    """A translator trained with the reference code (its `w_*` / `z_*` keys) into the pipeline, after
    checking its sizes against the pipeline's."""
    folder = Path(folder)
    spec = pipeline_spec(folder)
    recipe = read_recipe(spec)
    want = translator_config(spec, recipe)
    model = import_reference_checkpoint(checkpoint, mean_bound=recipe.mean_bound)
    got = model.config
    if (got.cond_dim, got.latent_dim) != (want.cond_dim, want.latent_dim):
        raise CheckpointError(f"{checkpoint} maps conditions of size {got.cond_dim} to latents of size "
                              f"{got.latent_dim}; this pipeline's CLIP gives {want.cond_dim} and its generator takes "
                              f"{want.latent_dim}: import the translator trained for this generator and CLIP")
    if got.extra_dim:
        raise CheckpointError(f"{checkpoint} has the reference's separate class head (y_layer, {got.extra_dim}-d); "
                              "tr0n-rt's BigGAN pipelines refine the class embedding inside the latent: train the "
                              f"translator here (`tr0n-rt pairs {folder}`, `tr0n-rt train --pipeline {folder}`)")
    name = "image_translator" if image else "translator"
    return set_translator(folder, model, name, {"imported_from": str(Path(checkpoint).resolve())})
