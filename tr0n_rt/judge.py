"""A world's judge without torch: judge.onnx on onnxruntime, and the verdict rule from the manifest.

It gives the same verdicts as the world's torch judge (export/worlds/*/judge.py: same keys, same
`correct`), so `tr0n-rt sample` and `tr0n-rt eval` on a bundle judge their images on the runtime
install. The manifest's "judge" entry (written by export/judge_export.py) is:

    file     "judge.onnx", also listed in the manifest's "files" (sha256 checked before loading)
    family   the world judge it was exported from ("shapes_judge", "digits_judge")
    heads    {head: [value names]}           judge.onnx output `head` is probabilities [batch, n_values]
    input    {"channels": C, "size": S}      judge.onnx input "images" is [batch, C, S, S] float32 in [-1, 1]
    rule     how a query names head values; its "kind" picks the verdict layout:
             "words" (prompts, shapes world): {"words": "tokenizer", "needs_any": [head]}
                 the prompt's words are those the bundle's word tokenizer reads (one word list for both:
                 letter runs, lower-cased, its aliases replaced); the first word that is a value of a head
                 names that head. A verdict is correct when the prompt names a `needs_any` head and every
                 named head is predicted as named.
             "class" (class names, digits world): {"prefix": regex, "names": {word: index}}
                 the query is stripped and lower-cased and `prefix` removed; the rest must be one decimal
                 digit or a word of `names`. The single head's prediction must be that class.
    validation  {"max_rel_err", "tolerance"}  ONNX against torch at export (informational)
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np

from .bundle import load_bundle, verify_files
from .jsonfile import shown
from .errors import BundleError, PromptError, ShapeError
from .extras import build_time
from .pipeline_json import read_pipeline_json

INPUT = "images"
CHUNK = 256  # images per judge run


class RuntimeJudge:
    """Checks generated images against their queries, on onnxruntime.

        judge = RuntimeJudge.from_bundle("engines/digits")   # None if the bundle has no judge
        judge.verdicts(images, ["3", "digit seven"])          # images: float32 [N, C, S, S] in [-1, 1]
    """

    def __init__(self, session, entry: dict, split=None):
        self.session, self.entry, self.split = session, entry, split  # split: prompt -> words ("words" rule)
        self.heads: dict[str, list[str]] = entry["heads"]
        self.channels, self.size = entry["input"]["channels"], entry["input"]["size"]
        self.rule = entry["rule"]

    @classmethod
    def from_bundle(cls, bundle_dir, backend_providers=None) -> "RuntimeJudge | None":
        """The bundle's judge, or None when its manifest has no "judge" entry."""
        bundle = load_bundle(bundle_dir, verify=False)  # the backend checks the graphs; judge.onnx is checked here
        return cls.from_manifest(bundle.folder, bundle.manifest, backend_providers)

    @classmethod
    def from_manifest(cls, folder, manifest: dict, backend_providers=None) -> "RuntimeJudge | None":
        """The judge of a manifest dict whose files lie in folder; None without a "judge" entry.
        backend_providers: onnxruntime provider names (default: CPU)."""
        from .backends.onnxruntime import import_onnxruntime, resolve_providers, session_io

        entry = manifest.get("judge")
        if entry is None:
            return None
        folder = Path(folder)
        check_entry(entry, folder)
        split = None
        if entry["rule"]["kind"] == "words":
            tokenizer = manifest.get("tokenizer") or {}
            if tokenizer.get("kind") != "words":
                raise BundleError(f"{folder}: the judge reads prompts with the bundle's word tokenizer, and the "
                                  f"manifest's tokenizer is {tokenizer.get('kind')!r}; re-export the bundle")
            from .tokenizer import tokenizer_from_dict

            split = tokenizer_from_dict(tokenizer).words
        name = entry["file"]
        listed = manifest.get("files", {})
        if name not in listed:
            raise BundleError(f"{folder}: judge file {name} is not listed in the manifest's 'files', so it "
                              "cannot be verified; re-export the bundle")
        verify_files(folder, {name: listed[name]})
        ort = import_onnxruntime()
        so = ort.SessionOptions()
        so.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(folder / name), sess_options=so,
                                           providers=resolve_providers(ort, backend_providers or ["cpu"]))
        except Exception as e:  # onnxruntime's own exception types share no base
            raise BundleError(f"onnxruntime {ort.__version__} cannot load {folder / name}: {e}; "
                              "re-export the bundle") from None
        inputs, outputs = session_io(session)
        want_in = {INPUT: [entry["input"]["channels"], entry["input"]["size"], entry["input"]["size"]]}
        have_in = {n: shape[1:] if shape else shape for n, (_, shape) in inputs.items()}
        have_out = {n: shape[1:] if shape else shape for n, (_, shape) in outputs.items()}
        want_out = {h: [len(v)] for h, v in entry["heads"].items()}
        if have_in != want_in or have_out != want_out:
            raise BundleError(f"{folder / name} takes {have_in} and gives {have_out} (batch axis left out); the "
                              f"manifest's judge entry says {want_in} -> {want_out}: re-export the bundle")
        return cls(session, entry, split)

    def probabilities(self, images) -> dict[str, np.ndarray]:
        """images [N, C, S, S] in [-1, 1] -> {head: probabilities [N, n_values]}."""
        x = np.asarray(images, dtype=np.float32)
        c, s = self.channels, self.size
        if x.ndim != 4 or x.shape[1:] != (c, s, s):
            raise ShapeError(f"judge takes images [N, {c}, {s}, {s}] in [-1, 1], got {tuple(x.shape)}")
        names = list(self.heads)
        parts = [self.session.run(names, {INPUT: np.ascontiguousarray(x[i:i + CHUNK])})
                 for i in range(0, len(x), CHUNK)]
        return {h: np.concatenate([p[k] for p in parts]) if parts else np.zeros((0, len(self.heads[h])), np.float32)
                for k, h in enumerate(names)}

    def verdicts(self, images, queries: list) -> list[dict]:
        """One dict per image (see verdicts below)."""
        if len(queries) != len(images):
            raise ShapeError(f"got {len(images)} images but {len(queries)} queries: pass one query per image")
        return verdicts(self.entry, self.probabilities(images), queries, self.split)

    def parse_prompt(self, prompt: str) -> dict[str, str | None]:
        return parse_prompt(self.entry, prompt, self.split)

    def parse_class(self, text: str | int) -> int:
        return parse_class(self.entry, text)


# The verdict rule, written once: the world judges' torch networks (export/worlds/*/judge.py) give their
# probabilities to these same functions, with their runtime_spec() as the entry.
def verdicts(entry: dict, probs: dict[str, np.ndarray], queries: list, split=None) -> list[dict]:
    """entry: a judge entry (heads, rule); probs: {head: probabilities [N, n_values]} -> one verdict per
    query: the keys of the rule's kind and "correct". split: prompt -> words (the "words" rule)."""
    if entry["rule"]["kind"] == "class":
        return class_verdicts(entry, probs, queries)
    return word_verdicts(entry, probs, queries, split)


# --- "words": every head a prompt names must be predicted as named (shapes world) ----------------
def parse_prompt(entry: dict, prompt: str, split) -> dict[str, str | None]:
    """The head values a prompt names ({head: value | None}): the words split(prompt) gives (the word
    tokenizer's); the first word naming a value of a head wins."""
    heads = entry["heads"]
    out: dict[str, str | None] = {h: None for h in heads}
    for w in split(prompt):
        for h, values in heads.items():
            if out[h] is None and w in values:
                out[h] = w
    return out


def word_verdicts(entry: dict, probs: dict[str, np.ndarray], prompts: list[str], split) -> list[dict]:
    """Per image: each head's prediction and confidence, what the prompt names ("wanted"), and "correct":
    the prompt names a `needs_any` head and every named head is predicted as named."""
    heads = entry["heads"]
    best = {h: (p.argmax(-1), p.max(-1)) for h, p in probs.items()}
    out = []
    for i, prompt in enumerate(prompts):
        wanted = parse_prompt(entry, prompt, split)
        v = {h: heads[h][int(best[h][0][i])] for h in heads}
        v.update({f"{h}_confidence": float(best[h][1][i]) for h in heads})
        v["wanted"] = wanted
        named = {h: w for h, w in wanted.items() if w is not None}
        v["correct"] = any(wanted[h] is not None for h in entry["rule"]["needs_any"]) and all(
            v[h] == w for h, w in named.items())
        out.append(v)
    return out


# --- "class": the single head must predict the query's class (digits world) ----------------------
def parse_class(entry: dict, text: str | int) -> int:
    """'3', 'digit 3', 'three', 'the digit three', 3 -> 3; anything else raises PromptError."""
    (classes,) = entry["heads"].values()
    names = entry["rule"]["names"]
    if isinstance(text, int) and not isinstance(text, bool) and 0 <= text < len(classes):
        return text
    key = re.sub(entry["rule"]["prefix"], "", str(text).strip().lower()).strip()
    if len(key) == 1 and key.isdecimal() and int(key) < len(classes):
        return int(key)
    if key in names:
        return int(names[key])
    raise PromptError(f"{text!r} is not a class; accepted: {', '.join(classes)}, {', '.join(names)}, "
                      "optionally prefixed by 'digit' (e.g. 'digit 3', 'digit three')")


def class_verdicts(entry: dict, probs: dict[str, np.ndarray], queries: list) -> list[dict]:
    """Per image: predicted class, its confidence, the target, the target's probability, correct."""
    targets = [parse_class(entry, q) for q in queries]
    ((head, classes),) = entry["heads"].items()
    p = probs[head]
    pred, conf = p.argmax(-1), p.max(-1)
    return [{"predicted": classes[k], "confidence": float(cf), "target": classes[t],
             "target_probability": float(pr[t]), "correct": bool(k == t)}
            for k, cf, t, pr in zip(pred.tolist(), conf, targets, p)]


def open_judge(folder: Path):
    """The world's judge: the bundle's judge.onnx when onnxruntime is installed (no torch, whether torch is
    installed or not); else, or for a pipeline folder that was never exported, the torch judge its
    pipeline.json names (the export extra); None when the folder has neither."""
    if (folder / "manifest.json").is_file() and importlib.util.find_spec("onnxruntime") is not None:
        judge = RuntimeJudge.from_bundle(folder)
        if judge is not None:
            return judge
    # exists(), not is_file(): a pipeline.json that is a folder or a pipe is an error to report, not "no judge"
    spec = read_pipeline_json(folder).get("judge") if (folder / "pipeline.json").exists() else None
    if not spec:
        return None
    return build_time("worlds", "the judge of a pipeline without a bundle").judge_from_spec(spec, folder)


def judge_images(judge, images, queries: list) -> list[dict | None]:
    """Verdicts of a judge (judge.onnx, or a world's torch judge) on numpy images [N, C, H, W]; queries:
    what each image is judged against, None to skip it (no judge: all None)."""
    if judge is None or not any(q is not None for q in queries):
        return [None] * len(queries)
    keep = [i for i, q in enumerate(queries) if q is not None]
    verdicts = judge.verdicts(images[keep], [queries[i] for i in keep])
    out_list = [None] * len(queries)
    for i, v in zip(keep, verdicts):
        out_list[i] = v
    return out_list


def check_entry(entry, folder: Path) -> None:
    """BundleError unless the manifest's judge entry has the fields this module reads, of the kinds it reads
    them as. load_bundle checks a manifest's judge against the schema already (schemas/manifest.schema.json);
    this also covers a manifest dict handed to from_manifest directly, and what the schema cannot say: the
    rule's heads exist, its prefix is a regular expression, its class indices are classes."""
    problems = []
    if not isinstance(entry, dict):
        raise BundleError(f"{folder}: manifest field 'judge' is {shown(entry)}, expected an object; re-export the bundle")
    if not isinstance(entry.get("file"), str):
        problems.append("'file' is not a file name")
    heads = entry.get("heads")
    if not (isinstance(heads, dict) and heads and all(
            isinstance(h, str) and isinstance(v, list) and v and all(isinstance(n, str) for n in v)
            for h, v in heads.items())):
        problems.append("'heads' is not {head: [value names]}")
        heads = {}
    size = entry.get("input")
    if not (isinstance(size, dict) and all(isinstance(size.get(k), int) and not isinstance(size.get(k), bool)
                                           and 0 < size[k] <= 16384 for k in ("channels", "size"))):
        problems.append("'input' is not {'channels': int, 'size': int} (1 .. 16384)")
    rule = entry.get("rule")
    kind = rule.get("kind") if isinstance(rule, dict) else None
    if kind == "words":
        needs = rule.get("needs_any")
        if not (rule.get("words") == "tokenizer" and isinstance(needs, list)
                and all(isinstance(h, str) and h in heads for h in needs)):
            problems.append("rule 'words' needs 'words': 'tokenizer' and 'needs_any' (a list of heads)")
    elif kind == "class":
        names, prefix = rule.get("names"), rule.get("prefix")
        n = len(next(iter(heads.values()))) if len(heads) == 1 else 0
        if not (isinstance(prefix, str) and isinstance(names, dict) and len(heads) == 1):
            problems.append("rule 'class' needs 'prefix', 'names' and exactly one head")
        else:
            try:
                re.compile(prefix)
            except (re.error, RecursionError, OverflowError) as e:
                problems.append(f"rule 'class' prefix {shown(prefix)} is no regular expression ({e})")
            bad = [k for k, i in names.items() if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n]
            if bad:
                problems.append(f"rule 'class' names {shown(bad)} do not name a class index 0 .. {n - 1}")
    else:
        problems.append(f"'rule' kind is {shown(kind)}; this tr0n-rt knows 'words' and 'class'")
    if problems:
        raise BundleError(f"{folder}: manifest field 'judge' is invalid: {'; '.join(problems)}. "
                          "Re-export the bundle with this tr0n-rt version")
