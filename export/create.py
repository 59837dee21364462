"""`tr0n-rt create`: a pipeline folder from your own checkpoints, with the reference's recipe per family.

    create_pipeline(out, generator="stylegan2", generator_weights="ffhq.pkl",
                    clip="ViT-B-32", clip_weights="open_clip_pytorch_model.bin")

writes out/pipeline.json, generator.safetensors and clip.safetensors (the checkpoints converted to plain
tensors: nothing in the folder is a pickle) and the TR0N recipe (pipeline.json "recipe"): how many pairs
to make, how to train the translator, and the sampling defaults. Every field can be overridden. The
translator is trained by the next steps (`tr0n-rt pairs DIR`, `tr0n-rt train --pipeline DIR`) or
imported from the reference code (`tr0n-rt import-translator DIR FILE`).

Reference defaults (github.com/layer6ai-labs/tr0n): K = 10 components; condition noise 0.2 for StyleGAN2
and 0.5 for BigGAN with LAION CLIP, added as absolute Gaussian noise to c; translator training Adam lr
1e-4, cosine schedule, batch 16, 10 epochs on 1M pairs, gradient clip 1, NLL scale 1e-4; BigGAN's means
bounded to [-2, 2] (2 tanh); sampling with the `paper` preset (T = 100, A = 50) and SGLD lr 0.1
(StyleGAN2) or 5.0 (BigGAN). DCGAN is not in the reference: it gets StyleGAN2's recipe.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from tr0n_rt.errors import CheckpointError, ConfigError, unknown_name
from tr0n_rt.settings import PRESETS, SamplingConfig

from .augment import AugmentConfig
from .checkpoints import load_state, load_weights, save_state
from .pipeline import write_pipeline
from .train_translator import TrainConfig, check_numbers


@dataclass(frozen=True)
class Recipe(TrainConfig):
    """How a pipeline's translator is made: the training settings (TrainConfig's fields and checks, the
    reference's values), plus the pairs and the translator's shape."""

    condition_noise: float = 0.2  # std of the Gaussian noise added to c while training (StyleGAN2's)
    pairs: int = 1_000_000  # synthetic pairs (the reference's count)
    pairs_seed: int = 0
    num_components: int = 10  # K
    mean_bound: float | None = None  # means = bound * tanh(.) (BigGAN: 2)

    def __post_init__(self):
        super().__post_init__()
        check_numbers(self, wholes={"pairs": 1, "pairs_seed": 0, "num_components": 1})
        if self.mean_bound is not None:
            check_numbers(self, positive=("mean_bound",))

    def training(self, **overrides) -> TrainConfig:
        return TrainConfig(**{**{f.name: getattr(self, f.name) for f in fields(TrainConfig)}, **overrides})


FAMILY_RECIPES = {
    "stylegan2": (Recipe(), PRESETS["paper"]),
    "dcgan": (Recipe(), PRESETS["paper"]),
    "biggan": (Recipe(condition_noise=0.5, mean_bound=2.0), PRESETS["paper"].with_overrides(latent_lr=5.0)),
    "biggan_deep": (Recipe(condition_noise=0.5, mean_bound=2.0), PRESETS["paper"].with_overrides(latent_lr=5.0)),
}


def load_generator(family: str, weights: Path, config: dict):
    """The family's own checkpoint layout -> our generator (eval). StyleGAN2: rosinality .pt / NVIDIA .pkl /
    our safetensors; BigGAN: BigGAN-PyTorch weights; BigGAN-deep: pytorch-pretrained-BigGAN weights (a
    file or its folder); DCGAN: our safetensors with its config. No loader runs code from the file."""
    try:
        if family == "stylegan2":
            from .models.stylegan2_load import import_stylegan2

            return import_stylegan2(weights, **config)
        if family == "biggan":
            from .models.biggan_import import import_biggan

            return import_biggan(weights, **config)
        if family == "biggan_deep":
            from .models.biggan_import import import_biggan_deep

            return import_biggan_deep(weights, **config)
        from .models.dcgan import DCGANGenerator

        if not config:
            raise ConfigError("a DCGAN checkpoint holds no architecture: pass --generator-config "
                              "'{\"latent_dim\": 100, \"image_size\": 64, \"channels\": 3, \"width\": 64}'")
        return load_weights(DCGANGenerator(**config), weights).eval()
    except CheckpointError as e:
        others = ", ".join(f for f in FAMILY_RECIPES if f != family)
        raise CheckpointError(f"{weights} is not a {family} checkpoint this loader reads ({e}); if it is "
                              f"another family's, pass --generator with one of: {others}") from None
    except TypeError as e:  # a config key the family does not take
        raise ConfigError(f"--generator-config does not fit {family} ({e})") from None


CLIP_VOCAB = 49408  # the BPE vocabulary of tr0n_rt.tokenizer.CLIPTokenizer (OpenAI's, open_clip's default)


def check_clip_config(model: str | None, model_cfg: dict | None) -> None:
    """ConfigError unless the open_clip model exists and tokenizes with CLIP's BPE (the tokenizer tr0n-rt
    ships without torch): models with a Hugging Face tokenizer (SigLIP, XLM-R, ...) are refused."""
    import open_clip

    if model is not None:
        if model not in open_clip.list_models():
            raise unknown_name("open_clip model", model, open_clip.list_models())
        model_cfg = open_clip.get_model_config(model)
    text = (model_cfg or {}).get("text_cfg") or {}
    if text.get("hf_tokenizer_name") or text.get("vocab_size", CLIP_VOCAB) != CLIP_VOCAB:
        raise ConfigError(f"open_clip model {model or 'of the given config'} tokenizes with "
                          f"{text.get('hf_tokenizer_name') or 'a vocabulary of ' + str(text.get('vocab_size'))}; "
                          f"tr0n-rt's runtime tokenizer is CLIP's BPE ({CLIP_VOCAB} tokens): choose a CLIP-BPE model "
                          "(ViT-B-32, ViT-B-16, ViT-L-14, ...)")


def load_clip(model: str | None, weights: Path, model_cfg: dict | None = None):
    """An open_clip model by architecture name or custom config (open_clip.CLIP keyword arguments), with
    weights from a local file (open_clip's checkpoint: safetensors or a weights-only torch file).
    OpenAI-trained weights use QuickGELU: name the model with its -quickgelu suffix (ViT-B-32-quickgelu)."""
    from .models.clip import OpenClipModel

    try:
        f = OpenClipModel(model_name=model) if model_cfg is None else OpenClipModel(model_cfg=model_cfg)
    except TypeError as e:  # a key open_clip.CLIP does not take, or one it needs
        raise ConfigError(f"--clip-config is not an open_clip model config ({e}): give open_clip.CLIP's keyword "
                          "arguments (embed_dim, vision_cfg, text_cfg)") from None
    try:
        f.load_state_dict(load_state(weights))
    except RuntimeError as e:  # missing, unexpected or misshapen keys
        first = str(e).strip().splitlines()
        raise CheckpointError(f"{weights} does not fit open_clip model {model or 'of the given config'} "
                              f"({first[1].strip() if len(first) > 1 else first[0]}): pass the architecture the "
                              "weights were trained as (--clip NAME, or --clip-config FILE)") from None
    return f.eval()


def _checked_file(path, what: str, flag: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist: pass the file with {flag}")
    return path


def create_pipeline(out: str | os.PathLike, generator: str, generator_weights, clip: str | None = None,
                    clip_weights=None, clip_config: dict | None = None, generator_config: dict | None = None,
                    name: str | None = None, recipe: dict | None = None, sampling: dict | None = None) -> Path:
    """Writes a pipeline folder at `out` (which must not exist or be empty); returns it. recipe and
    sampling: overrides of the family's Recipe and SamplingConfig fields. Every argument is checked
    before any model is loaded (the weights are then checked by loading them: CLIP first); the folder
    appears only when complete (staged beside it, then renamed)."""
    from tr0n_rt.tokenizer import CLIPTokenizer

    out = Path(out)
    if generator not in FAMILY_RECIPES:
        raise unknown_name("generator family", generator, FAMILY_RECIPES)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty folder: choose a new folder for the pipeline")
    g_path = _checked_file(generator_weights, "generator checkpoint", "--generator-weights")
    if (clip is None) == (clip_config is None):
        raise ConfigError("give the condition model: --clip NAME (an open_clip architecture) or --clip-config FILE")
    c_path = _checked_file(clip_weights, "CLIP weights", "--clip-weights") if clip_weights is not None else None
    if c_path is None:
        raise ConfigError("give the CLIP weights file with --clip-weights (nothing is downloaded)")
    base_recipe, base_sampling = FAMILY_RECIPES[generator]
    rec = _overridden(base_recipe, recipe or {}, "recipe")
    cfg = base_sampling.with_overrides(**(sampling or {}))
    if base_recipe.mean_bound is not None and rec.mean_bound is None:
        raise ConfigError(f"{generator}'s latent is bounded to [-{base_recipe.mean_bound}, {base_recipe.mean_bound}]: "
                          "the translator's means must be too (keep the recipe's mean_bound)")
    check_clip_config(clip, clip_config)

    f = load_clip(clip, c_path, clip_config)
    g = load_generator(generator, g_path, dict(generator_config or {}))
    parent = out.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.create-", dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)  # mkdtemp's 0700 would make the pipeline owner-only
    try:
        save_state(g.state_dict(), stage / "generator.safetensors")
        save_state(f.state_dict(), stage / "clip.safetensors")
        parts = {"name": name or out.name, "condition": "text", "classes": None,
                 "tokenizer": CLIPTokenizer(context_length=f.context_length).to_dict(),
                 "generator": {"family": generator, "config": g.config(), "weights": "generator.safetensors"},
                 "condition_model": {"family": "open_clip", "config": f.config(), "weights": "clip.safetensors"}}
        write_pipeline(stage, parts, None, AugmentConfig(), cfg, extra={
            "recipe": asdict(rec),
            "sources": {"generator": str(g_path.resolve()), "condition_model": str(c_path.resolve())}})
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out


def _overridden(base, overrides: dict, what: str):
    known = {f.name: f for f in fields(base)}
    bad = [k for k in overrides if k not in known]
    if bad:
        raise ConfigError(f"unknown {what} field(s) {', '.join(bad)}; known: {', '.join(known)}")
    try:
        return replace(base, **overrides)
    except (TypeError, ValueError) as e:  # a value of the wrong kind, e.g. epochs="ten"
        raise ConfigError(f"invalid {what} value in {overrides} ({e}): give numbers where numbers go") from None


def parse_settings(pairs: list[str]) -> tuple[dict, dict]:
    """["condition_noise=0.3", "steps=50", ...] -> (recipe overrides, sampling overrides), values parsed
    as JSON (numbers, null, true/false) or kept as text."""
    recipe_fields = {f.name for f in fields(Recipe)}
    sampling_fields = {f.name for f in fields(SamplingConfig)}
    recipe, sampling = {}, {}
    for item in pairs:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        if key in recipe_fields:
            recipe[key] = value
        elif key in sampling_fields:
            sampling[key] = value
        else:
            raise ConfigError(f"unknown setting {key!r}; recipe: {', '.join(sorted(recipe_fields))}; "
                              f"sampling: {', '.join(sorted(sampling_fields))}")
    return recipe, sampling


def read_recipe(spec: dict) -> Recipe:
    """A pipeline.json's recipe (pipelines made by create_pipeline)."""
    if not isinstance(spec.get("recipe"), dict):
        raise ConfigError("this pipeline has no recipe (it was not made by `tr0n-rt create`): create one, or "
                          "train its translator with the library (export/train_translator.py)")
    return _overridden(Recipe(), spec["recipe"], "recipe")
