"""The file formats a user hands tr0n-rt, read as untrusted input (issue 17): manifest.json against
tr0n_rt/schemas/manifest.schema.json, pipeline.json against tr0n_rt/schemas/pipeline.schema.json, the CLIP
BPE file a pipeline's tokenizer may point at, and the bounds of SamplingConfig. Whatever the file holds,
the readers answer with a typed error (tr0n_rt.errors) that names the field by its JSON path, shows the value
cut short and says what to do; never a raw AttributeError, RecursionError, OverflowError, a hang or gigabytes
of memory.

Names new in issue 17 are imported inside the tests, so that each test fails on its own before the fix.
"""
from __future__ import annotations

import copy
import gzip
import json
import math
import os
import threading
import tracemalloc
from pathlib import Path

import pytest

from tr0n_rt.bundle import load_bundle
from tr0n_rt.errors import BundleError, BundleVersionError, ConfigError, Tr0nError
from tr0n_rt.paths import world_dir
from tr0n_rt.settings import SamplingConfig

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "tr0n_rt" / "schemas"
MESSAGE_MAX = 1000  # characters: a message names the problem, it never quotes a whole value


def manifest_of(world: str) -> dict:
    return json.loads((world_dir(world) / "manifest.json").read_text())


def bundle_with(tmp_path: Path, m: dict | None = None, text: str | None = None, name: str = "b") -> Path:
    """A folder holding only manifest.json (m as JSON, or text): enough for load_bundle(verify=False)."""
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    (folder / "manifest.json").write_text(text if text is not None else json.dumps(m))
    return folder


def refused(folder: Path, *pieces: str) -> str:
    """load_bundle's BundleError for folder, checked to be short and to contain every piece."""
    with pytest.raises(BundleError) as info:
        load_bundle(folder, verify=False)
    message = str(info.value)
    assert len(message) < MESSAGE_MAX, message[:2000]
    for piece in pieces:
        assert piece in message, (piece, message)
    return message


# --- 1. manifest.json: the schema, the parse, the semantic checks ---------------------------------------------
DAMAGES = {  # name: (field path, new value, what the message must name)
    "tensor spec is a string": (("graphs", "translator", "inputs", "condition"), "float32",
                                "'graphs.translator.inputs.condition' is 'float32', expected object"),
    "shape is a string": (("graphs", "translator", "outputs", "std", "shape"), "D",
                          "'graphs.translator.outputs.std.shape' is 'D', expected list"),
    "tensor spec without dtype": (("graphs", "translator", "inputs", "condition"), {"shape": ["batch", 10]},
                                  "'graphs.translator.inputs.condition.dtype' is missing"),
    "negative dimension": (("graphs", "step", "inputs", "means", "shape"), ["batch", "components", -32],
                           "'graphs.step.inputs.means.shape[2]' is -32"),
    "huge dimension": (("graphs", "generator", "outputs", "images", "shape"), ["batch", 1, 2**62, 32],
                       "'graphs.generator.outputs.images.shape[2]'"),
    "unknown axis name": (("graphs", "generator", "inputs", "latent", "shape"), ["rows", 32],
                          "'graphs.generator.inputs.latent.shape[0]' is 'rows'"),
    "shape nested": (("graphs", "generator", "inputs", "latent", "shape"), [["batch"], 32],
                     "'graphs.generator.inputs.latent.shape[0]'"),
    "huge latent": (("latent", "dim"), 10**30, "'latent.dim'"),
    "negative latent": (("latent", "dim"), -5, "'latent.dim' is -5"),
    "no components": (("mixture", "components"), 0, "'mixture.components' is 0, expected >= 1 and <= 1024"),
    "NaN bounds": (("latent", "bounds"), float("nan"), "'latent.bounds' is nan"),
    "class names are numbers": (("condition", "classes"), list(range(10)), "'condition.classes[0]' is 0, expected str"),
    "file size huge": (("files", "translator.onnx"), {"sha256": "0" * 64, "bytes": 10**30},
                       '\'files["translator.onnx"].bytes\' is 1000000000000000000000000000000'),
    "file size negative": (("files", "translator.onnx"), {"sha256": "0" * 64, "bytes": -1},
                           '\'files["translator.onnx"].bytes\' is -1'),
    "sha256 not hex": (("files", "translator.onnx"), {"sha256": "xyz", "bytes": 1},
                       '\'files["translator.onnx"].sha256\' is \'xyz\''),
    "file outside the bundle": (("sources", "../../etc/passwd"), {"sha256": "0" * 64, "bytes": 1},
                                "leaves the bundle folder"),
    "image channels": (("image", "channels"), 2, "'image.channels' is 2"),
    "sampling steps": (("sampling", "steps"), 20_000, "'sampling.steps' is 20000, expected >= 0 and <= 10000"),
    "sampling copies": (("sampling", "copies"), 10**9, "'sampling.copies' is 1000000000, expected >= 0 and <= 1024"),
    "judge heads": (("judge", "heads"), {"class": [0, 1]}, "'judge.heads.class[0]' is 0, expected str"),
    "judge input": (("judge", "input"), {"channels": 1, "size": "32"}, "'judge.input.size' is '32'"),
    "noise scheme": (("noise", "version"), 2, "'noise.version' is 2, expected 1"),
    "unknown field": (("surprise",), 1, "unknown field(s) 'surprise'"),
    "engine profile": (("engines",), {"step": {"fp16": {"file": "step.fp16.plan", "sha256": "0" * 64, "bytes": 1,
                                                       "precision": "fp16", "tensorrt": "10.3", "compute_capability": "sm_90",
                                                       "profiles": [{"batch": -4, "shapes": {}}],
                                                       "source": {"file": "step.fp16.onnx", "sha256": "0" * 64}}}},
                       "'engines.step.fp16.profiles[0].batch' is -4"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_manifest_is_a_bundle_error_naming_the_field(tmp_path, damage):
    path, value, named = DAMAGES[damage]
    m = manifest_of("digits")
    target = m
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    refused(bundle_with(tmp_path, m), named, "re-export")


@pytest.mark.parametrize("text, named", [
    ('{"format": "tr0n-rt.bundle", "schema_version": 2, "export": ' + "[" * 100_000 + "]" * 100_000 + "}",
     "too deeply"),
    ('{"format": "tr0n-rt.bundle", "schema_version": 2, "export": ' + "[" * 200 + "]" * 200 + "}", "more than 32 deep"),
    ('{"format": "tr0n-rt.bundle", "schema_version": 2, "latent": ' + "7" * 5000 + "}", "is not valid JSON"),
], ids=["nesting-past-the-recursion-limit", "nesting-32", "5000-digit-integer"])
def test_an_unparseable_manifest_is_a_bundle_error(tmp_path, text, named):
    folder = tmp_path / "b"
    folder.mkdir()
    (folder / "manifest.json").write_text(text)
    refused(folder, named, "re-export")


def test_messages_stay_short_whatever_the_value(tmp_path):
    """A 1,000,000-entry shape once gave an 18 MB message: values in messages are cut to ~100 characters."""
    m = manifest_of("digits")
    m["graphs"]["step"]["inputs"]["means"]["shape"] = list(range(-1, -100_001, -1))
    message = refused(bundle_with(tmp_path, m), "'graphs.step.inputs.means.shape' has 100000 items, expected at most 8")
    m["graphs"]["step"]["inputs"]["means"]["shape"] = list(range(1_000_000))  # more values than any manifest needs
    refused(bundle_with(tmp_path, m, name="many"), "holds more than 300000 values")
    m = manifest_of("digits")
    m["name"] = "n" * 5_000_000
    refused(bundle_with(tmp_path, m, name="c"), "'name' has 5000000 characters")
    assert "nnnn" * 50 not in message


def test_an_oversized_manifest_is_refused_before_it_is_parsed(tmp_path):
    text = json.dumps(manifest_of("digits"), indent=2)
    folder = bundle_with(tmp_path, text=text[:-1] + " " * (17 << 20) + "}")  # valid JSON, 17 MiB
    refused(folder, "larger than 16 MiB")


def test_a_manifest_that_is_a_pipe_is_refused_without_blocking(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    folder = tmp_path / "b"
    folder.mkdir()
    os.mkfifo(folder / "manifest.json")
    outcome = []
    reader = threading.Thread(target=lambda: outcome.append(_raises(load_bundle, folder, False)), daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # unblock the reader before failing
        with open(folder / "manifest.json", "w"):
            pass
        pytest.fail("reading a FIFO blocked")
    assert isinstance(outcome[0], BundleError) and "is not a regular file" in str(outcome[0]), outcome


def _raises(f, *args):
    try:
        f(*args)
    except Exception as e:  # noqa: BLE001 -- the test inspects it
        return e
    return None


def test_the_schema_is_draft_2020_12_and_accepts_every_bundle_tr0n_rt_writes(text_bundle, class_bundle):
    jsonschema = pytest.importorskip("jsonschema")
    from tr0n_rt.jsonfile import schema_problems

    for name in ("manifest", "pipeline"):
        schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(schema)
    for folder in (world_dir("shapes"), world_dir("digits"), text_bundle, class_bundle):
        assert schema_problems("manifest", json.loads((folder / "manifest.json").read_text())) == []
        assert schema_problems("pipeline", json.loads((folder / "pipeline.json").read_text())) == []
        load_bundle(folder)


def test_the_schemas_bound_sampling_as_settings_does():
    """One set of numbers: the schemas' sampling ranges are settings.RANGES."""
    from tr0n_rt.settings import MODES, RANGES

    for name in ("manifest", "pipeline"):
        props = json.loads((SCHEMAS / f"{name}.schema.json").read_text())["properties"]["sampling"]["properties"]
        assert set(props) == {"mode", "init", *RANGES}
        assert props["mode"]["enum"] == list(MODES)
        for field, (lo, hi) in RANGES.items():
            assert (props[field]["minimum"], props[field]["maximum"]) == (lo, hi), field


def test_a_manifest_passing_the_schema_still_meets_the_contract(tmp_path):
    """What a schema cannot say: class names one per condition dimension, graphs against the contract."""
    m = manifest_of("digits")
    m["condition"]["dim"] = 11
    refused(bundle_with(tmp_path, m), "'condition.dim' is 11 but 'condition.classes' names 10 classes")
    m = manifest_of("digits")
    m["graphs"]["translator"]["inputs"]["cond"] = m["graphs"]["translator"]["inputs"].pop("condition")
    refused(bundle_with(tmp_path, m, name="c"), "contract")
    m = manifest_of("shapes")
    m["tokenizer"]["aliases"] = {"grey": "grau"}  # the word tokenizer is built at load: its words are checked
    refused(bundle_with(tmp_path, m, name="e"), "field 'tokenizer' is invalid: alias 'grey' names 'grau'")
    m = manifest_of("digits")
    m["schema_version"] = 1  # the version is read before the schema: the old-bundle error stays
    with pytest.raises(BundleVersionError, match="re-export it"):
        load_bundle(bundle_with(tmp_path, m, name="d"), verify=False)


def test_the_judge_entry_is_checked_where_a_schema_cannot(tmp_path):
    """A rule's prefix must be a regular expression and its names class indices; from_manifest takes dicts
    that never went through load_bundle."""
    from tr0n_rt.judge import RuntimeJudge, check_entry

    entry = manifest_of("digits")["judge"]
    check_entry(entry, tmp_path)
    bad = copy.deepcopy(entry)
    bad["rule"]["prefix"] = "(unclosed"
    with pytest.raises(BundleError, match=r"prefix '\(unclosed' is no regular expression"):
        check_entry(bad, tmp_path)
    bad = copy.deepcopy(entry)
    bad["rule"]["names"]["ten"] = 10
    with pytest.raises(BundleError, match=r"names \['ten'\] do not name a class index 0 \.\. 9"):
        RuntimeJudge.from_manifest(tmp_path, {**manifest_of("digits"), "judge": bad})


JSON_VALUES = [None, True, -1, 0, 2**40, 1.5, float("nan"), "", "x" * 300, "../x", "batch", [], [1, "a"], {"a": 1}]
SAMPLED = {"graphs": ("translator", "step", "text_encoder"), "files": ("translator.onnx",),
           "sources": ("translator.safetensors",), "export": ()}  # the others repeat these fields


def _paths(value, prefix=()):
    """Every path into a JSON value (two items of each list; of SAMPLED's objects, the entries named)."""
    yield prefix
    if isinstance(value, dict):
        keep = SAMPLED.get(prefix[-1]) if len(prefix) == 1 else None
        for k, v in value.items():
            if keep is None or k in keep:
                yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:2]):
            yield from _paths(v, (*prefix, i))


@pytest.mark.slow
def test_a_manifest_that_loads_can_be_read_by_every_reader(tmp_path):
    """Every field of both worlds' manifests replaced by hostile values (three per field, taken in turn from
    JSON_VALUES): load_bundle raises BundleError, or what it returns can be read without any other error by
    the tokenizer, the judge's entry check, the backends' IO comparison, the engine profiles and the sampling
    settings. ~20 s."""
    from tr0n_rt.backends.io_contract import tensor_problems
    from tr0n_rt.engine_profiles import concrete_shape
    from tr0n_rt.judge import check_entry
    from tr0n_rt.tokenizer import tokenizer_from_dict

    counts = {"refused": 0, "loaded": 0}
    for world in ("digits", "shapes"):
        original = manifest_of(world)
        for n, path in enumerate(list(_paths(original))[1:]):
            for value in (JSON_VALUES[(3 * n + k) % len(JSON_VALUES)] for k in range(3)):
                m = copy.deepcopy(original)
                target = m
                for p in path[:-1]:
                    target = target[p]
                target[path[-1]] = value
                folder = bundle_with(tmp_path, m)
                try:
                    bundle = load_bundle(folder, verify=False)
                except BundleError as e:
                    assert len(str(e)) < MESSAGE_MAX
                    counts["refused"] += 1
                    continue
                except Exception as e:  # noqa: BLE001
                    pytest.fail(f"{world} {path} = {value!r}: {type(e).__name__}: {e}"[:500])
                counts["loaded"] += 1
                try:
                    if bundle.info.tokenizer:
                        tokenizer_from_dict(bundle.info.tokenizer)(["a red star"])
                    if bundle.manifest["judge"]:
                        check_entry(bundle.manifest["judge"], folder)
                    for entry in bundle.manifest["graphs"].values():
                        for spec in {**entry["inputs"], **entry["outputs"]}.values():
                            tensor_problems(spec, "float32", [1] * len(spec["shape"]))
                            concrete_shape(spec["shape"], {"batch": 1, "copies": 1, "components": 1})
                    SamplingConfig(**bundle.manifest["sampling"]).hparams()
                except Tr0nError:
                    pass
                except Exception as e:  # noqa: BLE001
                    pytest.fail(f"{world} {path} = {value!r} loaded, then {type(e).__name__}: {e}"[:500])
    assert counts["refused"] > 800 and counts["loaded"] > 50, counts


# --- 2. pipeline.json: one safe reader, used for the judge --------------------------------------------------------
def _pipeline(tmp_path: Path, spec=None, text: str | None = None) -> Path:
    folder = tmp_path / "p"
    folder.mkdir(exist_ok=True)
    (folder / "pipeline.json").write_text(text if text is not None else json.dumps(spec))
    return folder


@pytest.mark.parametrize("change, named", [
    (lambda s: s.update(judge="shapes_judge"), "'judge' is 'shapes_judge', expected object or null"),
    (lambda s: s.update(judge={"family": 3}), "'judge.family' is 3, expected str"),
    (lambda s: s["translator"]["config"].update(cond_dim="64"), "'translator.config.cond_dim' is '64', expected int"),
    (lambda s: s["translator"]["config"].update(num_components=10**12), "'translator.config.num_components'"),
    (lambda s: s["generator"].update(weights="../../elsewhere.safetensors"), "'generator.weights'"),
    (lambda s: s["tokenizer"].update(vocab="red"), "'tokenizer.vocab' is 'red', expected list"),
    (lambda s: s["sampling"].update(steps=2**70), "'sampling.steps'"),
    (lambda s: s.pop("condition_model"), "'condition_model' is missing"),
    (lambda s: s.update(classes=[1, 2]), "'classes[0]' is 1, expected str"),
], ids=["judge-string", "judge-family", "cond-dim-string", "components-huge", "weights-outside", "vocab-string",
        "steps-huge", "part-missing", "classes-ints"])
def test_a_damaged_pipeline_json_is_a_config_error_naming_the_field(tmp_path, change, named):
    from tr0n_rt.judge import open_judge

    spec = json.loads((world_dir("shapes") / "pipeline.json").read_text())
    change(spec)
    folder = _pipeline(tmp_path, spec)
    with pytest.raises(ConfigError) as info:
        open_judge(folder)
    assert named in str(info.value) and len(str(info.value)) < MESSAGE_MAX, str(info.value)[:2000]


@pytest.mark.parametrize("text, named", [
    ("{not json", "is not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "too deeply"),
    ('{"judge": ' + "9" * 5000 + "}", "is not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"format": "tr0n-rt.pipeline", "version": 7}', "is not 'tr0n-rt.pipeline' v1"),
], ids=["syntax", "nesting", "digits", "array", "version"])
def test_an_unparseable_pipeline_json_is_a_config_error(tmp_path, text, named):
    from tr0n_rt.judge import open_judge

    with pytest.raises(ConfigError, match=named):
        open_judge(_pipeline(tmp_path, text=text))


def test_a_pipeline_json_that_is_no_file_is_an_error_not_a_hang(tmp_path):
    from tr0n_rt.judge import open_judge

    folder = tmp_path / "p"
    (folder / "pipeline.json").mkdir(parents=True)
    with pytest.raises(ConfigError, match="not a regular file"):
        open_judge(folder)
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "q"
        fifo.mkdir()
        os.mkfifo(fifo / "pipeline.json")
        with pytest.raises(ConfigError, match="not a regular file"):
            open_judge(fifo)


def test_read_pipeline_json_reads_every_pipeline_tr0n_rt_writes(tiny_text_pipeline, tiny_class_pipeline, tmp_path):
    from tr0n_rt.pipeline_json import read_pipeline_json

    for folder in (world_dir("shapes"), world_dir("digits"), tiny_text_pipeline, tiny_class_pipeline):
        assert read_pipeline_json(folder) == json.loads((folder / "pipeline.json").read_text())
    created = json.loads((world_dir("digits") / "pipeline.json").read_text())
    created.update(translator=None, recipe={"pairs": 1000}, sources={"generator": "/abs/g.pkl"})  # `tr0n-rt create`
    assert read_pipeline_json(_pipeline(tmp_path, created))["translator"] is None


# --- 3. the BPE file a pipeline's tokenizer may name ---------------------------------------------------------------
def test_a_bpe_path_that_is_a_pipe_is_refused_without_blocking(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    from tr0n_rt.tokenizer import tokenizer_from_dict

    fifo = tmp_path / "bpe.txt.gz"
    os.mkfifo(fifo)
    outcome = []
    reader = threading.Thread(target=lambda: outcome.append(
        _raises(tokenizer_from_dict, {"kind": "clip_bpe", "bpe_path": str(fifo)})), daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():
        with open(fifo, "wb"):  # unblock the reader before failing
            pass
        reader.join(10)
        pytest.fail("opening a FIFO as the BPE file blocked")
    assert isinstance(outcome[0], ConfigError) and "not a regular file" in str(outcome[0])


def test_a_bpe_gzip_bomb_is_refused_without_inflating_it(tmp_path):
    from tr0n_rt.tokenizer import CLIPTokenizer

    bomb = tmp_path / "bomb.txt.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as f:
        for _ in range(96):
            f.write(b"a b\n" * (1 << 18))  # 96 MiB of valid-looking merge lines, ~100 KB packed
    assert bomb.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match="unpacks to more than 16 MiB"):
            CLIPTokenizer(bpe_path=bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 48 << 20, f"{peak / 2**20:.0f} MiB allocated to refuse a 96 MiB bomb"


def test_a_bpe_file_too_large_or_corrupt_is_a_config_error(tmp_path):
    from tr0n_rt.tokenizer import CLIPTokenizer

    big = tmp_path / "big.txt.gz"
    big.write_bytes(gzip.compress(b"") + os.urandom(9 << 20))
    with pytest.raises(ConfigError, match="more than the 8 MiB"):
        CLIPTokenizer(bpe_path=big)
    real = gzip.compress(b"header\n" + b"a b\n" * 100_000)
    corrupt = tmp_path / "corrupt.txt.gz"
    corrupt.write_bytes(real[:20] + bytes(b ^ 0x55 for b in real[20:200]) + real[200:])  # deflate data damaged
    with pytest.raises(ConfigError, match="cannot read the BPE merges file"):
        CLIPTokenizer(bpe_path=corrupt)


def test_the_shipped_bpe_file_still_loads():  # a guard: the bounds leave room for the real file
    from tr0n_rt.tokenizer import CLIPTokenizer

    assert CLIPTokenizer()(["a red star"])[0, :3].tolist() == [49406, 320, 736]


# --- 4. numbers with upper bounds --------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value, message", [
    ("steps", 2**70, "steps must be >= 0 and <= 10000, got 1180591620717411303424"),
    ("steps", 10**400, "steps must be >= 0 and <= 10000, got an integer of"),
    ("copies", 10**9, "copies must be >= 0 and <= 1024, got 1000000000"),
    ("copies", 1025, "copies must be >= 0 and <= 1024"),
    ("latent_lr", 1e300, "latent_lr must be >= 0 and <= 1000"),
    ("latent_lr", -0.1, "latent_lr must be >= 0"),
    ("momentum", 1.5, "momentum must be >= 0 and <= 1"),
    ("noise_std", 1e6, "noise_std must be >= 0 and <= 100"),
    ("logits_lr", -1.0, "logits_lr must be >= 0 and <= 1000"),
    ("clip_norm", 1e300, "clip_norm must be > 0 (at least 1e-30) and <= 1e+06"),
    ("adam_eps", 0.0, "adam_eps must be > 0 (at least 1e-30) and <= 1, got 0.0 (Adam divides by sqrt(v) + eps)"),
    ("adam_eps", 1e-300, "adam_eps must be > 0"),
    ("aesthetic_weight", 1e9, "aesthetic_weight must be >= 0 and <= 1000"),
    ("candidates", 0, "candidates must be >= 1 and <= 64, got 0"),
    ("candidates", 65, "candidates must be >= 1 and <= 64"),
    ("candidates", 2.0, "candidates must be a finite whole number"),
    ("start_noise", -0.1, "start_noise must be >= 0 and <= 100"),
    ("start_noise", float("nan"), "start_noise must be a finite number"),
])
def test_sampling_numbers_have_upper_bounds(field, value, message):
    with pytest.raises(ConfigError) as info:
        SamplingConfig(**{field: value})
    assert str(info.value).startswith(message) and len(str(info.value)) < 300, str(info.value)
    with pytest.raises(ConfigError):
        SamplingConfig().with_overrides(**{field: value})


def test_sampling_bounds_are_named_and_reachable():
    from tr0n_rt import settings

    assert (settings.MAX_STEPS, settings.MAX_COPIES) == (10_000, 1024)
    edge = SamplingConfig(steps=settings.MAX_STEPS, copies=settings.MAX_COPIES, latent_lr=settings.MAX_LR, momentum=1,
                          noise_std=settings.MAX_NOISE_STD, logits_lr=0, clip_norm=settings.MAX_CLIP_NORM,
                          adam_eps=settings.MIN_POSITIVE, aesthetic_weight=settings.MAX_AESTHETIC_WEIGHT)
    assert all(math.isfinite(float(v[0])) and v[0] >= 0 for v in edge.hparams().values())  # finite in float32
    assert edge.hparams()["adam_eps"][0] > 0


@pytest.mark.parametrize("settings_", [{"stepz": 8}, {"steps": 8, "surprise": None}])
def test_unknown_sampling_settings_are_config_errors(settings_):
    with pytest.raises(ConfigError, match=r"unknown sampling setting\(s\) \['(stepz|surprise)'\]; known: adam_eps"):
        SamplingConfig(**settings_)


@pytest.mark.parametrize("settings_", [{"steps": "8"}, {"copies": 2.5}, {"mode": ["mixture"]}, {"init": None}])
def test_sampling_settings_of_the_wrong_kind_stay_config_errors(settings_):
    """A guard (these were ConfigErrors before issue 17 too): strings, fractions and lists are no settings."""
    with pytest.raises(ConfigError, match="steps|copies|mode|init"):
        SamplingConfig(**settings_)


def test_a_manifest_sampling_setting_out_of_range_is_a_bundle_error(tmp_path):
    m = manifest_of("shapes")
    m["sampling"]["noise_std"] = 1e300
    refused(bundle_with(tmp_path, m), "'sampling.noise_std' is 1e+300, expected >= 0 and <= 100.0")
