"""A TR0N pipeline in torch: generator + condition model + translator (+ tokenizer, judge), loaded from a
folder whose `pipeline.json` names each part's family, config and safetensors weights.

pipeline.json (format "tr0n-rt.pipeline", version 1):
    name, condition ("text" | "class"), classes (class names, class pipelines only),
    generator / condition_model / judge: {"family", "config", "weights" (file name or null)},
    translator: {"config", "weights"}, tokenizer: tokenizer_from_dict() input or null,
    image_translator: {"config", "weights"} or absent: the translator for CLIP *image* conditions,
        trained without condition noise (the reference trains a separate one for image conditioning),
    aesthetic: {"weights"} or absent: a linear aesthetic head on the CLIP image embedding (energy.py),
    augment: AugmentConfig fields, sampling: SamplingConfig fields (the pipeline's defaults).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path


from tr0n_rt.atomic import write_json
from tr0n_rt.errors import CheckpointError, ConfigError
from tr0n_rt.pipeline_json import FORMAT, VERSION, read_pipeline_json
from tr0n_rt.settings import SamplingConfig

from .augment import AugmentConfig
from .checkpoints import load_weights
from .energy import AestheticHead, Energy
from .models.registry import build_condition_model, build_generator
from .translator import TranslatorConfig, TranslatorGMM



class TorchPipeline:
    def __init__(self, folder: Path, spec: dict, generator, condition_model, translator, image_translator=None,
                 aesthetic: AestheticHead | None = None):
        self.folder = folder
        self.spec = spec
        self.name: str = spec["name"]
        self.condition: str = spec["condition"]
        self.classes: list[str] | None = spec.get("classes")
        self.generator = generator.eval().requires_grad_(False)
        self.condition_model = condition_model.eval().requires_grad_(False)
        self.translator = translator.eval().requires_grad_(False)
        self.image_translator = image_translator.eval().requires_grad_(False) if image_translator else None
        self.aesthetic = aesthetic.eval().requires_grad_(False) if aesthetic is not None else None
        if hasattr(self.condition_model, "prepare_for"):
            self.condition_model.prepare_for(self.generator.image_size)
        augment = spec.get("augment") or {}
        self.augment = AugmentConfig(**{**augment, "policy": tuple(augment.get("policy", AugmentConfig.policy))})
        self.sampling = SamplingConfig(**spec.get("sampling", {}))
        self.tokenizer = None
        if spec.get("tokenizer"):
            from tr0n_rt.tokenizer import tokenizer_from_dict

            self.tokenizer = tokenizer_from_dict(spec["tokenizer"])

    def energy(self) -> Energy:
        return Energy(self.generator, self.condition_model, self.augment, self.aesthetic)

    @property
    def image_conditioning(self) -> bool:
        """CLIP pipelines can be conditioned on images (with the image translator when there is one)."""
        return self.condition_model.kind == "clip"

    def judge(self):
        """The world's independent judge, or None."""
        spec = self.spec.get("judge")
        if not spec:
            return None
        from .worlds import judge_from_spec

        return judge_from_spec(spec, self.folder)

    @classmethod
    def load(cls, folder: str | Path) -> "TorchPipeline":
        folder = Path(folder)
        path = folder / "pipeline.json"
        if not path.is_file():
            raise CheckpointError(
                f"{folder} holds no pipeline.json: pass a pipeline folder (e.g. engines/shapes), "
                "or build one with `tr0n-rt train --world shapes`"
            )
        spec = read_pipeline_json(folder)  # size, parse, format, version and schema, typed errors
        if spec["translator"] is None:
            raise CheckpointError(f"{folder} has no trained translator yet: make pairs and train it "
                                  f"(`tr0n-rt pairs {folder}`, then `tr0n-rt train --pipeline {folder}`), or "
                                  f"import one trained with the reference code (`tr0n-rt import-translator {folder} FILE`)")
        generator, condition_model = load_models(folder, spec)
        translator = load_translator(folder, spec["translator"])
        image_translator = load_translator(folder, spec["image_translator"]) if spec.get("image_translator") else None
        aesthetic = None
        if spec.get("aesthetic"):
            aesthetic = load_weights(AestheticHead(condition_model.cond_dim), folder / spec["aesthetic"]["weights"])
        return cls(folder, spec, generator, condition_model, translator, image_translator, aesthetic)


def load_models(folder: Path, spec: dict):
    """A pipeline's generator and condition model from pipeline.json `spec` (eval, no grad; the condition
    model's resize prepared for the generator's image size): what pairs, training and sampling share."""
    g = build_part(folder, spec["generator"], build_generator, "generator").eval().requires_grad_(False)
    f = build_part(folder, spec["condition_model"], build_condition_model, "condition_model").eval().requires_grad_(False)
    if hasattr(f, "prepare_for"):
        f.prepare_for(g.image_size)
    return g, f


def load_translator(folder: Path, part: dict) -> TranslatorGMM:
    try:
        return load_weights(TranslatorGMM(TranslatorConfig(**part["config"])), folder / part["weights"])
    except (KeyError, TypeError) as e:
        raise ConfigError(f"translator entry {part!r} of {folder / 'pipeline.json'} is invalid ({e}); "
                          "rebuild it with `tr0n-rt train`") from None


def build_part(folder: Path, part: dict, factory, field: str):
    """A pipeline part {"family", "config", "weights"} -> the module, weights loaded from folder."""
    try:
        module = factory(part["family"], part.get("config", {}))
    except KeyError as e:
        raise ConfigError(f"pipeline field {field} lacks {e}") from None
    if part.get("weights"):
        load_weights(module, folder / part["weights"])
    return module


def write_pipeline(folder: str | Path, parts: dict, translator: TranslatorGMM | None, augment: AugmentConfig,
                   sampling: SamplingConfig, extra: dict | None = None) -> Path:
    """Writes translator weights and pipeline.json; `parts` holds generator, condition_model, tokenizer,
    judge, classes, condition and name as world builders return them. translator None: not trained yet
    (`tr0n-rt create`), pipeline.json's translator is null until `set_translator`."""
    folder = Path(folder)
    spec = {"format": FORMAT, "version": VERSION}
    for key in ("name", "condition", "classes", "generator", "condition_model", "tokenizer", "judge"):
        spec[key] = parts.get(key)
    spec["translator"] = translator.save(folder) if translator is not None else None
    for key in ("image_translator", "aesthetic"):
        if parts.get(key):
            spec[key] = parts[key]
    spec["augment"] = {**asdict(augment), "policy": list(augment.policy)}
    spec["sampling"] = sampling.to_dict()
    spec.update(extra or {})
    write_json(folder / "pipeline.json", spec)
    return folder / "pipeline.json"


def set_translator(folder: str | Path, translator: TranslatorGMM, name: str = "translator", record: dict | None = None) -> dict:
    """Puts a trained translator into a pipeline folder: <name>.safetensors / .json written, then
    pipeline.json's `name` entry (translator or image_translator) replaced atomically; record: how it was
    made (pairs, epochs, validation NLL), kept under pipeline.json "training"."""
    folder = Path(folder)
    path = folder / "pipeline.json"
    spec = read_pipeline_json(folder)
    spec[name] = translator.save(folder, name)
    if record is not None:
        spec.setdefault("training", {})[name] = record
    write_json(path, spec)
    return spec[name]

