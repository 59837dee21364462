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

A manifest is untrusted input: read_manifest reads it as a regular file of at most 16 MiB (a FIFO never
blocks, deep nesting and 5000-digit numbers are parse errors), then checks it against
tr0n_rt/schemas/manifest.schema.json (JSON Schema draft 2020-12: every field typed, every count and size
bounded, closed objects closed), and load_bundle adds what a schema cannot say (the graph contract, listed
files, the aesthetic field against the step graph). Every problem is a BundleError naming the field by its
JSON path, with the value cut short. pipeline.json, a pipeline folder's description, is read the same way by
tr0n_rt/pipeline_json.py (tr0n_rt/schemas/pipeline.schema.json; ConfigError).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from .backends.base import PipelineInfo
from .errors import BundleError, BundleVersionError, ConfigError
from .graphs import pipeline_graphs, required_graphs
from .jsonfile import read_json_file, schema_problems, shown
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
        raise BundleError(f"{where}: manifest field {path!r} is {shown(value)}, expected "
                          f"{getattr(kind, '__name__', kind)}; re-export the bundle")
    return value


# --- reading JSON files that may be damaged or hostile ------------------------------------------------------
MANIFEST_MAX_BYTES = 16 << 20  # the embedded worlds' manifests are ~30 KB; a 65536-word vocabulary ~1 MB
REEXPORT = "re-export the bundle (`tr0n-rt export --pipeline PIPELINE_DIR --out BUNDLE`)"


def read_manifest(folder: str | Path) -> dict:
    """manifest.json of a bundle folder, read safely (read_json_file) and checked: its format and version
    (BundleVersionError for another version), then schemas/manifest.schema.json. Raises BundleError naming
    the first problems by JSON path. What a schema cannot say, load_bundle checks after this."""
    folder = Path(folder)
    path = folder / "manifest.json"
    if not path.exists():  # not is_file(): a manifest.json that is a folder or a pipe is reported as such
        raise BundleError(f"{folder} is not a bundle (no manifest.json): export one with "
                          f"`tr0n-rt export --pipeline DIR --out {folder}`")
    m = read_json_file(path, MANIFEST_MAX_BYTES, BundleError, f"the bundle is damaged: {REEXPORT}")
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise BundleError(f"{path}: field 'format' is {shown(m.get('format') if isinstance(m, dict) else m)}, "
                          f"expected {FORMAT!r}: this is no tr0n-rt bundle manifest")
    version = _field(m, "schema_version", int, path)
    if version != SCHEMA_VERSION:
        newer = version > SCHEMA_VERSION
        raise BundleVersionError(
            f"{path}: bundle format version {shown(version)}, and this tr0n-rt reads version {SCHEMA_VERSION}: "
            + ("upgrade tr0n-rt to read it" if newer else
               f"re-export it from its pipeline folder with `tr0n-rt export --pipeline PIPELINE_DIR --out {folder}` "
               "(an embedded world: `tr0n-rt export --world NAME`)"))
    problems = schema_problems("manifest", m)
    if problems:
        raise BundleError(f"{path}: {'; '.join(problems)}. The manifest is damaged or was not written by this "
                          f"tr0n-rt: {REEXPORT}")
    return m


def load_bundle(folder: str | Path, verify: bool = True) -> Bundle:
    """Reads and validates manifest.json (read_manifest: safely, against the schema; then what the schema cannot
    say); with verify, checks every listed file's size and sha256."""
    folder = Path(folder)
    path = folder / "manifest.json"
    m = read_manifest(folder)
    kind = m["condition"]["kind"]
    graphs, files, sources = m["graphs"], m["files"], m["sources"]
    missing = [g for g in required_graphs(kind) if g not in graphs]
    if missing:
        raise BundleError(f"{path}: graph(s) {', '.join(missing)} missing from field 'graphs'; re-export")
    for g, entry in graphs.items():
        for prec, name in entry["files"].items():
            if name not in files:
                raise BundleError(f"{path}: {name} (graphs.{g}.files.{prec}) is not listed in field 'files'")
    takes_alpha = "aesthetic_weight" in graphs["step"]["inputs"]
    contract = {s.name: s for s in pipeline_graphs(kind, "image_encoder" in graphs, "image_translator" in graphs, takes_alpha)}
    for g, entry in graphs.items():
        if g not in contract:
            raise BundleError(f"{path}: a {kind}-conditional bundle has no {g} graph (field 'graphs'); re-export it")
        want, have = contract[g], (list(entry["inputs"]), list(entry["outputs"]))
        if sorted(have[0]) != sorted(want.inputs) or sorted(have[1]) != sorted(want.outputs):
            raise BundleError(f"{path}: graph {g} takes {shown(have[0], 300)} and gives {shown(have[1], 300)}; this "
                              f"tr0n-rt's contract (tr0n_rt/graphs.py) says {list(want.inputs)} -> "
                              f"{list(want.outputs)}: re-export the bundle")
    if takes_alpha != bool(m["aesthetic"]):
        raise BundleError(f"{path}: field 'aesthetic' is {shown(m['aesthetic'])} but the step graph "
                          f"{'takes' if takes_alpha else 'lacks'} input aesthetic_weight; re-export the bundle")
    classes = m["condition"]["classes"]
    if kind == "class" and len(classes) != m["condition"]["dim"]:
        raise BundleError(f"{path}: field 'condition.dim' is {m['condition']['dim']} but 'condition.classes' names "
                          f"{len(classes)} classes (the condition is one-hot over them); re-export the bundle")
    try:
        sampling = SamplingConfig(**m["sampling"])
    except ConfigError as e:
        raise BundleError(f"{path}: field 'sampling' is invalid: {e}; re-export the bundle") from None
    if m["tokenizer"] and m["tokenizer"]["kind"] == "words":  # cheap to build: its words are checked now
        from .tokenizer import tokenizer_from_dict

        try:
            tokenizer_from_dict(m["tokenizer"])
        except ConfigError as e:
            raise BundleError(f"{path}: field 'tokenizer' is invalid: {e}; re-export the bundle") from None
    info = PipelineInfo(
        name=m["name"], condition=kind, cond_dim=m["condition"]["dim"], latent_dim=m["latent"]["dim"],
        num_components=m["mixture"]["components"], image_size=m["image"]["size"], channels=m["image"]["channels"],
        latent_bounds=m["latent"]["bounds"], tokenizer=_tokenizer(m, folder, files, path), classes=classes,
        sampling=sampling, image_input=m["image_input"] if "image_encoder" in graphs else None,
        image_translator="image_translator" in graphs, aesthetic=bool(m["aesthetic"]),
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
