"""`tr0n-rt info FOLDER`: what a pipeline or bundle folder holds, and which step comes next.

Reads only JSON and file sizes (no model is loaded, no torch), so it answers in a fraction of a second:
the models and their sizes, the recipe, the synthetic pairs made so far, the translator and how it was
trained, the exported graphs and their validation, and the TensorRT engines with the GPU they target.
"""
from __future__ import annotations

import json
from pathlib import Path

from .bundle import read_manifest
from .jsonfile import read_json_file
from .errors import ConfigError
from .pipeline_json import read_pipeline_json

PAIRS_DIR = "pairs"  # where `tr0n-rt pairs DIR` writes, inside the pipeline folder
TRAINING_DIR = "training"  # where `tr0n-rt train --pipeline DIR` keeps its checkpoints


def _json(path: Path) -> dict | None:
    """A JSON object file read safely (bundle.read_json_file), None when absent."""
    if not path.exists():
        return None
    data = read_json_file(path, 16 << 20, ConfigError, "re-create or re-export it")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a JSON object; re-create or re-export it")
    return data


def _mib(folder: Path, name: str | None) -> str:
    if not name:
        return "none"
    if not (folder / name).is_file():
        return "missing"
    return f"{(folder / name).stat().st_size / 2**20:.1f} MiB"


def describe(folder: str | Path) -> dict:
    """What the folder holds, as a dict: pipeline, recipe, pairs, translators, bundle, engines, next."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder: give a pipeline folder (made by `tr0n-rt create`) or a bundle")
    spec = read_pipeline_json(folder) if (folder / "pipeline.json").exists() else None  # schema-checked
    manifest = read_manifest(folder) if (folder / "manifest.json").exists() else None
    if spec is None and manifest is None:
        raise ConfigError(f"{folder} holds neither pipeline.json nor manifest.json: it is no pipeline or bundle; "
                          "make one with `tr0n-rt create DIR --generator ... --clip ...`")
    out: dict = {"folder": str(folder)}
    if spec is not None:
        parts = {k: spec.get(k) for k in ("generator", "condition_model") if isinstance(spec.get(k), dict)}
        out["pipeline"] = {"name": spec.get("name"), "condition": spec.get("condition"),
                           **{k: {"family": v.get("family"), "weights": _mib(folder, v.get("weights"))}
                              for k, v in parts.items()}}
        if isinstance(spec.get("recipe"), dict):
            out["recipe"] = spec["recipe"]
        out["translators"] = {k: ({"weights": _mib(folder, spec[k].get("weights")),
                                   **spec.get("training", {}).get(k, {})} if isinstance(spec.get(k), dict) else None)
                              for k in ("translator", "image_translator") if k in spec}
    index = _json(folder / PAIRS_DIR / "pairs.json")
    if index is not None:
        shards = sorted((folder / PAIRS_DIR).glob("pairs-*.safetensors"))
        count, size = int(index.get("count", 0)), int(index.get("shard_size", 1)) or 1
        out["pairs"] = {"count": count, "shards_made": len(shards), "shards": -(-count // size),
                        "bytes": sum(p.stat().st_size for p in shards)}
    if manifest is not None:
        graphs = manifest.get("graphs") if isinstance(manifest.get("graphs"), dict) else {}
        out["bundle"] = {g: sorted(e.get("files", {})) for g, e in graphs.items() if isinstance(e, dict)}
        engines = manifest.get("engines") if isinstance(manifest.get("engines"), dict) else {}
        out["engines"] = {f"{g}.{p}": {k: s.get(k) for k in ("gpu", "compute_capability", "tensorrt", "platform", "failed")
                                       if s.get(k) is not None}
                          for g, by in engines.items() if isinstance(by, dict) for p, s in by.items() if isinstance(s, dict)}
    out["next"] = next_step(folder, out)
    return out


def next_step(folder: Path, out: dict) -> str:
    """The command that takes this folder one step further on the road checkpoints -> samples."""
    translators = out.get("translators", {})
    if "pipeline" in out and not translators.get("translator"):
        pairs = out.get("pairs")
        want = (out.get("recipe") or {}).get("pairs")
        if pairs is None or pairs["shards_made"] < pairs["shards"]:
            return f"tr0n-rt pairs {folder}" + (f"   (recipe: {want} pairs)" if want else "")
        return f"tr0n-rt train --pipeline {folder}"
    if "bundle" not in out:
        return f"tr0n-rt export --pipeline {folder}"
    query = '"a prompt"' if (out.get("pipeline") or {}).get("condition", "text") == "text" else "CLASS"
    if not out.get("engines"):
        return f"tr0n-rt sample --pipeline {folder} {query}   (on an NVIDIA GPU: tr0n-rt build {folder})"
    return f"tr0n-rt sample --pipeline {folder} {query} --backend tensorrt --device cuda"


def render(info: dict) -> str:
    """describe()'s dict as lines for a terminal."""
    lines = [f"{info['folder']}"]
    for key in ("pipeline", "recipe", "translators", "pairs", "bundle", "engines"):
        if key in info:
            value = info[key]
            if isinstance(value, dict) and value:
                lines.append(f"  {key}:")
                lines += [f"    {k}: {json.dumps(v)}" for k, v in value.items()]
            else:
                lines.append(f"  {key}: {json.dumps(value)}")
    lines.append(f"  next: {info['next']}")
    return "\n".join(lines)
