"""A bundle: the contract between export (torch) and the runtime (no torch), and what a client in any
language runs. The format is specified, for such clients, in docs/bundle-format.md (carried in every
bundle as BUNDLE-FORMAT.md); this is its reader. A bundle is a folder with `manifest.json` and:

    format          "tr0n-rt.bundle";  schema_version  2;  spec  {"file": "BUNDLE-FORMAT.md", "version": 2}
    name            pipeline name (e.g. "shapes")
    condition       {"kind": "text" | "class", "dim": d_c, "classes": [names] | null}
    latent          {"dim": D, "bounds": b | null}          refined latents are clamped to [-b, b]
    mixture         {"components": K}
    image           {"size": H, "channels": C}              generator output, in [-1, 1]
    tokenizer       {"kind": "words", "vocab", "aliases"?, "context_length"} |
                    {"kind": "clip_bpe", "context_length", "bpe_file"} (the BPE merges, a listed file) | null
    augment         DiffAugment policy the energy graphs were exported with
    sampling        default SamplingConfig fields
    noise           {"scheme": "philox4x32-10", "version": 1}: the host noise (tr0n_rt/noise.py)
    onnxruntime     how the reference runtime makes its sessions (backends/onnxruntime.SESSION_SETTINGS)
    graphs          {name: {"files": {"fp32": file, "fp16": file?}, "inputs": {tensor: {"dtype", "shape"}},
                            "outputs": {...}}}              shapes name the dynamic axes "batch", "copies", "components"
    image_input     {"size": S, "mean": [3], "std": [3], "resize", "crop"} | null: how a user's image becomes
                    the image_encoder graph's pixels (CLIP pipelines)
    aesthetic       {"dim": d_c} | null: the step graph takes aesthetic_weight, the energy graph returns aesthetic
    judge           the world's independent judge as judge.onnx + its prompt rule | null (tr0n_rt/judge.py)
    files           {file: {"sha256": hex, "bytes": n}}     every file the bundle needs, checked on load:
                    graph files, and the weights file `{graph file}.data` of a graph saved with external
                    data (weights over 1 GiB; the graph names it as its initializers' location), the judge,
                    the tokenizer's file and BUNDLE-FORMAT.md
    sources         {file: {"sha256", "bytes"}}: every other file the folder held at export (a pipeline
                    folder exported into itself: pipeline.json, weights, prompts), checked on load too, so a
                    retrained translator is caught; sub-folders (pairs/, training/) are not part of a bundle
    export          exporter, opset, library versions, validation figures (informational)

Graph names and tensor meanings are those of tr0n_rt/graphs.py.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .backends.base import PipelineInfo
from .errors import BundleError, BundleVersionError, ConfigError
from .graphs import GRAPHS, pipeline_graphs, required_graphs
from .settings import SamplingConfig

FORMAT = "tr0n-rt.bundle"
SCHEMA_VERSION = 2
SPEC_FILE = "BUNDLE-FORMAT.md"
PRECISIONS = ("fp32", "fp16")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Bundle:
    folder: Path
    manifest: dict
    info: PipelineInfo

    def graph_file(self, graph: str, precision: str = "fp32") -> Path:
        entry = self.manifest["graphs"].get(graph)
        if entry is None:
            raise BundleError(f"bundle {self.folder} has no {graph!r} graph; re-export it with `tr0n-rt export`")
        files = entry["files"]
        if precision not in files:
            raise BundleError(f"bundle {self.folder} has no {precision} {graph!r} graph (has: "
                              f"{', '.join(files)}); export with --fp16 or choose --precision fp32")
        return self.folder / files[precision]

    def io(self, graph: str) -> tuple[dict, dict]:
        entry = self.manifest["graphs"][graph]
        return entry["inputs"], entry["outputs"]

    def has(self, graph: str) -> bool:
        return graph in self.manifest["graphs"]

    def read_verified(self, name: str) -> bytes:
        """A listed file's bytes, checked against the manifest as read: what the caller then hands to an
        engine is exactly what was verified, even if the file is replaced after load_bundle."""
        meta = self._listed(name)
        data = (self.folder / name).read_bytes()
        if len(data) != meta["bytes"] or hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise BundleError(f"bundle file {self.folder / name} does not match its sha256 in the manifest: it "
                              "changed since the bundle was opened; re-export or re-copy the bundle")
        return data

    def verify(self, names) -> None:
        """Checks the named listed files again (size and sha256), e.g. right before an engine reads them."""
        verify_files(self.folder, {name: self._listed(name) for name in names})

    def _listed(self, name: str) -> dict:
        check_inside(name)
        meta = self.manifest["files"].get(name)
        if meta is None:
            raise BundleError(f"{name} is not listed in {self.folder / 'manifest.json'} (field 'files'), so it "
                              "cannot be verified; rebuild or re-export the bundle")
        return meta


def _field(manifest: dict, path: str, kind, where: Path):
    """manifest["a"]["b"] for path "a.b", checked to be of `kind`; a BundleError names the field."""
    value = manifest
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise BundleError(f"{where}: manifest field {path!r} is missing; re-export the bundle")
        value = value[part]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BundleError(f"{where}: manifest field {path!r} is {value!r}, expected {getattr(kind, '__name__', kind)}")
    return value


def load_bundle(folder: str | Path, verify: bool = True) -> Bundle:
    """Reads and validates manifest.json; with verify, checks every listed file's size and sha256."""
    folder = Path(folder)
    path = folder / "manifest.json"
    if not path.is_file():
        raise BundleError(f"{folder} is not a bundle (no manifest.json): export one with "
                          f"`tr0n-rt export --pipeline DIR --out {folder}`")
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON ({e}); the bundle is damaged: re-export it") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise BundleError(f"{path}: field 'format' is {m.get('format') if isinstance(m, dict) else m!r}, "
                          f"expected {FORMAT!r}")
    version = _field(m, "schema_version", int, path)
    if version != SCHEMA_VERSION:
        newer = version > SCHEMA_VERSION
        raise BundleVersionError(
            f"{path}: bundle format version {version}, and this tr0n-rt reads version {SCHEMA_VERSION}: "
            + ("upgrade tr0n-rt to read it" if newer else
               f"re-export it from its pipeline folder with `tr0n-rt export --pipeline PIPELINE_DIR --out {folder}` "
               "(an embedded world: `tr0n-rt export --world NAME`)"))
    kind = _field(m, "condition.kind", str, path)
    if kind not in ("text", "class"):
        raise BundleError(f"{path}: field 'condition.kind' is {kind!r}, expected 'text' or 'class'")
    if kind == "text" and not isinstance(m.get("tokenizer"), dict):
        raise BundleError(f"{path}: a text bundle needs field 'tokenizer'")
    if m.get("spec") != {"file": SPEC_FILE, "version": SCHEMA_VERSION}:
        raise BundleError(f"{path}: field 'spec' is {m.get('spec')!r}, expected "
                          f"{{'file': {SPEC_FILE!r}, 'version': {SCHEMA_VERSION}}}; re-export the bundle")
    if kind == "class" and not isinstance(m["condition"].get("classes"), list):
        raise BundleError(f"{path}: a class bundle needs field 'condition.classes'")
    graphs = _field(m, "graphs", dict, path)
    needed = required_graphs(kind)
    missing = [g for g in needed if g not in graphs]
    if missing:
        raise BundleError(f"{path}: graph(s) {', '.join(missing)} missing from field 'graphs'; re-export")
    unknown = [g for g in graphs if g not in GRAPHS]
    if unknown:
        raise BundleError(f"{path}: unknown graph(s) {', '.join(unknown)} in field 'graphs' (known: {', '.join(GRAPHS)})")
    files = _field(m, "files", dict, path)
    sources = _field(m, "sources", dict, path)
    for name, meta in {**files, **sources}.items():
        if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str) or not isinstance(meta.get("bytes"), int):
            raise BundleError(f"{path}: files.{name} is {meta!r}, expected {{'bytes': int, 'sha256': str}}; "
                              "the manifest is damaged: re-export the bundle")
    for g, entry in graphs.items():
        for prec, name in _field(m, f"graphs.{g}.files", dict, path).items():
            if prec not in PRECISIONS:
                raise BundleError(f"{path}: graphs.{g}.files has precision {prec!r}; known: {', '.join(PRECISIONS)}")
            if not isinstance(name, str):
                raise BundleError(f"{path}: graphs.{g}.files.{prec} is {name!r}, expected a file name")
            if name not in files:
                raise BundleError(f"{path}: {name} (graphs.{g}.files.{prec}) is not listed in field 'files'")
        _field(m, f"graphs.{g}.inputs", dict, path)
        _field(m, f"graphs.{g}.outputs", dict, path)
    if "image_encoder" in graphs:
        size = _field(m, "image_input.size", int, path)
        for key in ("mean", "std"):
            v = _field(m, f"image_input.{key}", list, path)
            if len(v) != 3 or not all(isinstance(x, (int, float)) for x in v):
                raise BundleError(f"{path}: field 'image_input.{key}' must be 3 numbers, got {v!r}")
        if size <= 0:
            raise BundleError(f"{path}: field 'image_input.size' must be > 0, got {size}")
    takes_alpha = "aesthetic_weight" in _field(m, "graphs.step.inputs", dict, path)
    contract = {s.name: s for s in pipeline_graphs(kind, "image_encoder" in graphs, "image_translator" in graphs, takes_alpha)}
    for g, entry in graphs.items():
        if g not in contract:
            raise BundleError(f"{path}: a {kind}-conditional bundle has no {g} graph (field 'graphs'); re-export it")
        want, have = contract[g], (list(entry["inputs"]), list(entry["outputs"]))
        if sorted(have[0]) != sorted(want.inputs) or sorted(have[1]) != sorted(want.outputs):
            raise BundleError(f"{path}: graph {g} takes {have[0]} and gives {have[1]}; this tr0n-rt's contract "
                              f"(tr0n_rt/graphs.py) says {list(want.inputs)} -> {list(want.outputs)}: re-export the bundle")
    if takes_alpha != bool(m.get("aesthetic")):
        raise BundleError(f"{path}: field 'aesthetic' is {m.get('aesthetic')!r} but the step graph "
                          f"{'takes' if takes_alpha else 'lacks'} input aesthetic_weight; re-export the bundle")
    try:
        sampling = SamplingConfig(**_field(m, "sampling", dict, path))
    except (TypeError, ConfigError) as e:
        raise BundleError(f"{path}: field 'sampling' is invalid: {e}") from None
    info = PipelineInfo(
        name=_field(m, "name", str, path), condition=kind, cond_dim=_field(m, "condition.dim", int, path),
        latent_dim=_field(m, "latent.dim", int, path), num_components=_field(m, "mixture.components", int, path),
        image_size=_field(m, "image.size", int, path), channels=_field(m, "image.channels", int, path),
        latent_bounds=m["latent"].get("bounds"),
        tokenizer=_tokenizer(m, folder, files, path), classes=m["condition"].get("classes"), sampling=sampling,
        image_input=m.get("image_input") if "image_encoder" in graphs else None,
        image_translator="image_translator" in graphs, aesthetic=bool(m.get("aesthetic")),
    )
    if SPEC_FILE not in files:
        raise BundleError(f"{path}: {SPEC_FILE} is not listed in field 'files'; re-export the bundle")
    if verify:
        verify_files(folder, {**files, **sources})
    return Bundle(folder, m, info)


def _tokenizer(m: dict, folder: Path, files: dict, path: Path) -> dict | None:
    """The manifest's tokenizer as tokenizer_from_dict() takes it: a CLIP tokenizer's `bpe_file` (a listed
    bundle file) becomes its absolute `bpe_path`."""
    tokenizer = m.get("tokenizer")
    if not isinstance(tokenizer, dict) or tokenizer.get("kind") != "clip_bpe":
        return tokenizer
    name = tokenizer.get("bpe_file")
    if not isinstance(name, str) or name not in files:
        raise BundleError(f"{path}: tokenizer.bpe_file is {name!r}, expected a file listed in field 'files'; "
                          "re-export the bundle")
    check_inside(name)
    rest = {k: v for k, v in tokenizer.items() if k != "bpe_file"}
    return {**rest, "bpe_path": str((folder / name).resolve())}


def check_inside(name: str) -> None:
    """BundleError unless a manifest's file name stays inside the bundle folder."""
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise BundleError(f"bundle file name {name!r} leaves the bundle folder; the manifest is not trusted")


def verify_files(folder: Path, files: dict) -> None:
    """Every listed file exists with its recorded size and sha256, or a BundleError says which is not."""
    for name, meta in files.items():
        check_inside(name)
        f = folder / name
        if not f.is_file():
            raise BundleError(f"bundle file {f} is missing; copy the whole bundle folder or re-export it")
        size = f.stat().st_size
        if size != meta.get("bytes"):
            raise BundleError(f"bundle file {f} has {size} bytes, the manifest says {meta.get('bytes')}: "
                              "it is truncated or replaced; re-export or re-copy the bundle")
        if sha256_file(f) != meta.get("sha256"):
            raise BundleError(f"bundle file {f} does not match its sha256 in the manifest: it was modified "
                              "or corrupted; re-export or re-copy the bundle")


def graph_fingerprint(manifest: dict, file: str) -> str:
    """What identifies a graph's content: its file's sha256, combined with that of its external weights
    (`<file>.data`, written beside graphs too large for one protobuf) when it has them. A graph file with
    external weights records only where they lie, so its own hash does not change with them."""
    files = manifest["files"]
    graph = files.get(file, {}).get("sha256", "")
    data = files.get(f"{file}.data")
    if data is None:
        return graph
    return hashlib.sha256(f"{graph}+{data.get('sha256', '')}".encode()).hexdigest()


def file_entry(path: Path) -> dict:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}
