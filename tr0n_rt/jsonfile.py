"""JSON files read as untrusted input, and checked against the formats' JSON Schemas (tr0n_rt/schemas).

read_json_file reads a regular file of bounded size (a FIFO or device is refused before it is opened, so
nothing blocks) and turns every parse failure (bad UTF-8, bad JSON, 5000-digit numbers, deep nesting, too
many values) into the caller's typed error; schema_problems checks a value against a schema (draft 2020-12,
strict types: 8.0 is no integer, NaN is no number) and says what is wrong by JSON path, with every value
cut short (shown), so that a 2,000,000-entry shape never makes an 18 MB message. bundle.read_manifest and
pipeline_json.read_pipeline_json are built on these.
"""
from __future__ import annotations

import json
import math
import os
import re
import reprlib
import stat
from functools import cache
from pathlib import Path

JSON_MAX_DEPTH = 32  # objects and arrays inside each other; the formats need 8
# JSON values (objects, arrays, scalars) in one file: a 65536-word vocabulary with as many aliases is ~200,000.
# Bounds the schema check too (jsonschema takes ~10-40 us a value, so at most a few seconds).
JSON_MAX_VALUES = 300_000
SHOWN_CHARS = 100  # values in messages are cut to this many characters
SCHEMAS = Path(__file__).resolve().parent / "schemas"


_REPR = reprlib.Repr()  # a repr that looks at a bounded part of a value, however large or deep
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple = 3, 8, 12, 12
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = SHOWN_CHARS, SHOWN_CHARS, 60


def shown(value, limit: int = SHOWN_CHARS) -> str:
    """repr(value) for a message, cut to about `limit` characters however large the value (a manifest may
    hold a 2,000,000-entry list: its repr is never built whole), with the size of a long list or text."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    text = _REPR.repr(value)
    text = text if len(text) <= limit else text[:limit] + "..."
    if isinstance(value, (list, dict)) and len(value) > _REPR.maxlist:
        text += f" ({len(value)} entries)"
    elif isinstance(value, str) and len(value) > limit:
        text += f" ({len(value)} characters)"
    return text


def read_json_file(path: Path, max_bytes: int, error: type, fix: str):
    """The JSON value in `path`, read safely: only a regular file (a FIFO or device is refused before it is
    opened, so nothing blocks), at most max_bytes, parse errors of every kind (bad UTF-8, bad JSON, numbers
    of over 4300 digits, nesting deeper than Python's recursion limit or than JSON_MAX_DEPTH) raised as
    `error` with what to do next (`fix`). NaN and Infinity parse; the schemas refuse them where numbers matter."""
    path = Path(path)
    try:
        raw = _read_regular(path, max_bytes)
    except FileNotFoundError:
        raise error(f"{path} does not exist; {fix}") from None
    except OSError as e:
        raise error(f"cannot read {path} ({e.strerror or e}); {fix}") from None
    if raw is None:
        raise error(f"{path} is not a regular file (a folder, pipe or device); {fix}")
    if len(raw) > max_bytes:
        raise error(f"{path} is larger than {max_bytes >> 20} MiB, more than such a file ever needs: it is "
                    f"damaged or not what it claims to be; {fix}")
    try:
        value = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise error(f"{path} nests arrays or objects too deeply to be read; {fix}") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, int digits limit
        raise error(f"{path} is not valid JSON ({shown(str(e))}); {fix}") from None
    depth, count = _depth_and_count(value, JSON_MAX_VALUES)
    if depth > JSON_MAX_DEPTH:
        raise error(f"{path} nests arrays or objects more than {JSON_MAX_DEPTH} deep; {fix}")
    if count > JSON_MAX_VALUES:
        raise error(f"{path} holds more than {JSON_MAX_VALUES} values, more than such a file ever needs; {fix}")
    return value


def _read_regular(path: Path, max_bytes: int) -> bytes | None:
    """Up to max_bytes + 1 bytes of path, None if it is not a regular file. stat before open, and O_NONBLOCK
    so that a file swapped for a FIFO in between cannot block either; fstat checks what was opened."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        return None
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return f.read(max_bytes + 1)


def _depth_and_count(value, max_count: int) -> tuple[int, int]:
    """(deepest nesting, number of values) of a parsed JSON value, without recursion; stops counting past
    max_count."""
    stack, deepest, count = [(value, 1)], 0, 0
    while stack and count <= max_count:
        v, depth = stack.pop()
        count += 1
        if isinstance(v, (dict, list)):
            deepest = max(deepest, depth)
            if depth <= JSON_MAX_DEPTH:
                stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))
            else:
                break
    return deepest, count


@cache
def validator(name: str):
    """The Draft 2020-12 validator of tr0n_rt/schemas/<name>.schema.json, with JSON's types read strictly:
    an integer is an int (8.0 is not), a number is finite (NaN and Infinity are not) and neither is a bool."""
    import jsonschema

    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    base = jsonschema.Draft202012Validator
    types = base.TYPE_CHECKER.redefine_many({
        "integer": lambda _, v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda _, v: (isinstance(v, int) and not isinstance(v, bool)) or (
            isinstance(v, float) and math.isfinite(v)),
    })
    return jsonschema.validators.extend(base, type_checker=types)(schema)


def schema_problems(name: str, value, limit: int = 3) -> list[str]:
    """The first `limit` ways `value` breaks schemas/<name>.schema.json, each naming the field by its JSON
    path (graphs.step.inputs.means.shape[0]), the value found (cut short) and what was expected."""
    out = []
    for error in validator(name).iter_errors(value):  # lazily: a manifest with a million wrong items stops early
        problem = _problem(error)
        if problem not in out:  # `required` reports each missing field, each time with all of them
            out.append(problem)
        if len(out) == limit:
            break
    return out


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TYPE_NAMES = {"integer": "int", "number": "number", "string": "str", "object": "object", "array": "list",
               "boolean": "bool", "null": "null"}


def json_path(parts) -> str:
    """('graphs', 'step', 'inputs', 'means', 'shape', 0) -> 'graphs.step.inputs.means.shape[0]'; keys that
    are not identifiers are quoted: files["step.onnx"].bytes."""
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif _IDENTIFIER.fullmatch(p) and len(p) <= 64:
            out += f".{p}" if out else p
        else:
            out += f"[{json.dumps(p[:64] + ('...' if len(p) > 64 else ''))}]"
    return out


def _cut(text: str, limit: int = SHOWN_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _where(parts) -> str:
    return f"field {json_path(parts)!r}" if parts else "the top level"


def _expected(error) -> str:
    """What the schema node that failed asks for, in words."""
    v, want, node = error.validator, error.validator_value, error.schema
    if v == "type":
        kinds = [want] if isinstance(want, str) else list(want)
        return " or ".join(_TYPE_NAMES.get(k, k) for k in kinds)
    if v == "enum":
        return "one of " + _cut(", ".join(map(repr, want)), 300)
    if v == "const":
        return shown(want)
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        low = (f">= {node['minimum']}" if "minimum" in node else
               f"> {node['exclusiveMinimum']}" if "exclusiveMinimum" in node else "")
        high = (f"<= {node['maximum']}" if "maximum" in node else
                f"< {node['exclusiveMaximum']}" if "exclusiveMaximum" in node else "")
        return " and ".join(x for x in (low, high) if x)
    if v == "pattern":
        return node.get("description") or f"a string matching {want}"
    return node.get("description") or _cut(error.message)


def _problem(error) -> str:
    v, where, value = error.validator, _where(error.absolute_path), error.instance
    if "propertyNames" in error.relative_schema_path:  # the key itself is wrong; the path is its object's
        return f"{where} has a key {shown(value)}, expected {_expected(error)}"
    if v == "required":
        missing = [k for k in error.validator_value if isinstance(value, dict) and k not in value]
        if len(missing) == 1:
            return f"{_where([*error.absolute_path, missing[0]])} is missing"
        return f"fields {_cut(', '.join(repr(json_path([*error.absolute_path, k])) for k in missing), 300)} are missing"
    if v == "additionalProperties":
        known = error.schema.get("properties", {})
        extra = [k for k in value if k not in known] if isinstance(value, dict) else []
        return (f"{where} has unknown field(s) {_cut(', '.join(map(repr, extra)))}"
                + (f" (known: {_cut(', '.join(known), 300)})" if known else ""))
    if v in ("minItems", "maxItems", "minProperties", "maxProperties", "minLength", "maxLength"):
        what = {"Items": "items", "Properties": "entries", "Length": "characters"}[v[3:]]
        bound = "at least" if v.startswith("min") else "at most"
        return f"{where} has {len(value)} {what}, expected {bound} {error.validator_value}: {shown(value)}"
    if v == "uniqueItems":
        return f"{where} lists an item more than once: {shown(value)}"
    return f"{where} is {shown(value)}, expected {_expected(error)}"
