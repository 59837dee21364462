"""The HTTP JSON API of `tr0n-rt serve`, as data: request bodies -> checked jobs, results -> response bodies.
No Ray and no engine here, so every rule is tested without a cluster (tests/test_serve_protocol.py).

    POST /v1/generate   {"prompts": ["a red star"]} | {"classes": ["3"]} | {"embeddings": [[...d_c]]} |
                        {"images": ["<base64 PNG/JPEG/WebP>"]}, and optionally
                        "samples" (per condition, default 1), "seed" (default 0: sample j has seed SEED + j),
                        "preset" ("fast" | "paper"), "mode" ("sample" | "mixture"), "steps",
                        "png" (default true: each image as base64 PNG)
                        -> 200 {"pipeline", "conditioning", "translator", "images": [record, ...]}
    GET  /v1/info       -> the pipeline, its condition kind, classes, the limits below
    GET  /healthz       -> 200 while the process serves; GET /readyz -> 200 once the engine is loaded and warm
                        (503 while the server stops)

A record is what `tr0n-rt sample` writes in its JSON for one image (condition, sample, seed, energy,
settings, seconds_per_image, judge, aesthetic), plus "png" and "batch": {"id", "rows"}, the server batch
that made the image (rows from every request in it), so that batching is observable.

Errors are JSON {"error": {"status", "code", "message"}} with a 4xx status for the client's mistakes
(400 malformed, 404/405 route, 411/413 body size, 415 content type, 422 values) and 5xx for the server's
(500 engine failure, 503 overloaded or shutting down, 504 timeout); 5xx are safe to retry: an image is a
function of its condition and seed only.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import numbers
from dataclasses import dataclass, field

import numpy as np

from ..errors import PromptError, Tr0nError
from ..noise import SEED_LIMIT
from ..settings import MODES, PRESETS, SamplingConfig, preset

KINDS = {"prompts": "prompt", "classes": "class", "embeddings": "embedding", "images": "image"}  # field -> key
OPTIONS = ("samples", "seed", "preset", "mode", "steps", "png")
GENERATE, INFO, HEALTH, READY = "/v1/generate", "/v1/info", "/healthz", "/readyz"


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; every limit is checked before any work."""

    max_body_bytes: int = 4 << 20  # 4 MiB: room for 16 base64 images of ~180 KB
    max_conditions: int = 16  # prompts, classes, embeddings or images per request
    max_samples: int = 16  # samples per condition
    max_images: int = 64  # conditions x samples per request
    max_prompt_chars: int = 1000  # CLIP reads 77 tokens; longer text is cut by the tokenizer anyway
    max_steps: int = 200  # Langevin steps: bounds a request's time (the paper uses 100)
    timeout_s: float = 300.0  # a request's whole time in the server, queue included

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class RequestError(Tr0nError):
    """A request the server refuses, with its HTTP status and a stable code."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def body(self) -> dict:
        return error_body(self.status, self.code, self.message)


def error_body(status: int, code: str, message: str) -> dict:
    return {"error": {"status": status, "code": code, "message": message}}


@dataclass
class Job:
    """One checked request: conditions of one kind, each sampled `samples` times."""

    key: str  # the record key: prompt | class | embedding | image
    labels: list  # per condition: the prompt, the class name, or "embedding i" / "image i"
    inputs: list  # per condition: a prompt (str), a class (str), an embedding [d_c] or pixels [3, S, S] float32
    samples: int
    seed: int
    config: SamplingConfig
    png: bool = True
    translator: str = "translator"
    judged: list | None = None  # per condition: what the judge checks, or None

    def rows(self) -> list[Row]:
        """Condition i, sample j -> one Row with seed SEED + j, in the order of `tr0n-rt sample`."""
        return [Row(self.key, self.inputs[i], self.seed + j, self.config, self.translator,
                    None if self.judged is None else self.judged[i])
                for i in range(len(self.inputs)) for j in range(self.samples)]

    def records(self, results: list[RowResult]) -> list[dict]:
        """The rows' results -> one record per image, as `tr0n-rt sample` writes them (+ png, batch)."""
        out = []
        for n, res in enumerate(results):
            i, j = divmod(n, self.samples)
            rec = {self.key: self.labels[i], "sample": j, "seed": self.seed + j, "energy": res.energy,
                   "settings": self.config.to_dict(), "seconds_per_image": res.seconds_per_image,
                   "judge": res.verdict, "batch": res.batch}
            if res.aesthetic is not None:
                rec["aesthetic"] = res.aesthetic
            if self.png:
                rec["png"] = base64.b64encode(res.png).decode("ascii")
            out.append(rec)
        return out


@dataclass(frozen=True)
class Row:
    """One image to make: how its condition is given, its seed and its settings. Rows of equal
    (config, translator) can share a batch whichever requests they come from."""

    kind: str  # prompt | class | embedding | image
    value: object  # str | np.ndarray
    seed: int
    config: SamplingConfig
    translator: str
    judged: str | None

    @property
    def group(self) -> tuple:
        return self.config, self.translator


@dataclass
class RowResult:
    png: bytes
    energy: float
    seconds_per_image: dict
    verdict: dict | None
    batch: dict
    aesthetic: float | None = None
    pixels: np.ndarray | None = field(default=None, repr=False)  # [C, H, W] float32 in [-1, 1] (tests)


def _whole(name: str, value, lo: int, hi: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= value <= hi:
        raise RequestError(422, f"bad_{name}", f"{name} must be a whole number from {lo} to {hi:,}, got "
                                               f"{json.dumps(value)[:60]}{hint}")
    return int(value)


def parse_json(body: bytes, limits: Limits) -> dict:
    """The request body -> a JSON object, or 413 / 400."""
    if len(body) > limits.max_body_bytes:
        raise body_too_large(limits)
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(400, "bad_json", f"the body is not JSON ({str(e)[:100]}); send a JSON object such as "
                                            '{"prompts": ["a red star"], "samples": 2}') from None
    except RecursionError:
        raise RequestError(400, "bad_json", "the body nests too deeply; send a flat JSON object") from None
    if not isinstance(data, dict):
        raise RequestError(400, "bad_json", f"the body must be a JSON object, got {type(data).__name__}")
    return data


def body_too_large(limits: Limits) -> RequestError:
    return RequestError(413, "body_too_large", f"the body is larger than {limits.max_body_bytes:,} bytes: send "
                                               "fewer or smaller images per request")


def parse_generate(data: dict, info, limits: Limits, base: SamplingConfig) -> Job:
    """A generate request's JSON object -> a Job, checked against the pipeline (info: BundleInfo) and the
    limits; every mistake is a RequestError (422 unless the shape of the JSON is wrong: 400)."""
    unknown = sorted(set(data) - set(KINDS) - set(OPTIONS))
    if unknown:
        raise RequestError(400, "unknown_field", f"unknown field(s) {', '.join(map(repr, unknown))[:200]}; known: "
                                                 f"{', '.join(list(KINDS) + list(OPTIONS))}")
    given = [k for k in KINDS if k in data]
    if len(given) != 1:
        raise RequestError(400, "no_condition" if not given else "two_conditions",
                           f"give exactly one of {', '.join(KINDS)} (got {', '.join(given) or 'none'})")
    kind = given[0]
    values = data[kind]
    if not isinstance(values, list) or not values:
        raise RequestError(400, f"bad_{kind}", f"{kind} must be a non-empty JSON list")
    if len(values) > limits.max_conditions:
        raise RequestError(422, "too_many_conditions", f"{len(values)} {kind} in one request, more than "
                                                       f"{limits.max_conditions}: split the request")
    samples = _whole("samples", data.get("samples", 1), 1, limits.max_samples, "")
    if len(values) * samples > limits.max_images:
        raise RequestError(422, "too_many_images", f"{len(values)} {kind} x {samples} samples = "
                                                   f"{len(values) * samples} images, more than {limits.max_images} "
                                                   "per request: split the request")
    seed = _whole("seed", data.get("seed", 0), 0, SEED_LIMIT - samples, " (seeds SEED .. SEED + samples - 1 "
                                                                       "must be below 2^64)")
    config = _config(data, limits, base)
    png = data.get("png", True)
    if not isinstance(png, bool):
        raise RequestError(422, "bad_png", f"png must be true or false, got {json.dumps(png)[:60]}")
    key = KINDS[kind]
    if kind == "prompts":
        inputs = [_prompt(p, i, info, limits) for i, p in enumerate(values)]
        return Job(key, inputs, inputs, samples, seed, config, png, judged=inputs)
    if kind == "classes":
        inputs = [_class(c, info) for c in values]
        return Job(key, inputs, inputs, samples, seed, config, png, judged=inputs)
    if kind == "embeddings":
        inputs = [_embedding(e, i, info) for i, e in enumerate(values)]
        return Job(key, [f"embedding {i}" for i in range(len(inputs))], inputs, samples, seed, config, png)
    if not info.image_input:
        raise RequestError(422, "no_image_input", f"pipeline {info.name!r} takes no image conditions; give "
                                                  f"{'classes' if info.condition == 'class' else 'prompts'}")
    inputs = [_image(v, i, info.image_input["size"]) for i, v in enumerate(values)]
    translator = "image_translator" if info.image_translator else "translator"
    return Job(key, [f"image {i}" for i in range(len(inputs))], inputs, samples, seed, config, png, translator)


def _config(data: dict, limits: Limits, base: SamplingConfig) -> SamplingConfig:
    name = data.get("preset")
    if name is not None and (not isinstance(name, str) or name not in PRESETS):
        raise RequestError(422, "bad_preset", f"preset must be one of {', '.join(PRESETS)}, got "
                                              f"{json.dumps(name)[:60]}")
    config = preset(name) if name else base
    if "mode" in data:
        if data["mode"] not in MODES:
            raise RequestError(422, "bad_mode", f"mode must be one of {', '.join(MODES)}, got "
                                                f"{json.dumps(data['mode'])[:60]}")
        config = config.with_overrides(mode=data["mode"])
    if "steps" in data:
        config = config.with_overrides(steps=_whole("steps", data["steps"], 0, limits.max_steps, ""))
    if config.steps > limits.max_steps:
        raise RequestError(422, "too_many_steps", f"preset {name!r} runs {config.steps} steps, more than this "
                                                  f"server's {limits.max_steps}: give \"steps\" <= {limits.max_steps}")
    return config


def _prompt(p, i: int, info, limits: Limits) -> str:
    if info.condition == "class":
        raise RequestError(422, "class_pipeline", f"pipeline {info.name!r} is class-conditional: send \"classes\" "
                                                  f"(one of {', '.join(info.classes or [])})")
    if not isinstance(p, str) or not p.strip():
        raise RequestError(422, "bad_prompt", f"prompt {i} must be non-empty text, got {json.dumps(p)[:60]}")
    if len(p) > limits.max_prompt_chars:
        raise RequestError(422, "prompt_too_long", f"prompt {i} has {len(p):,} characters, more than "
                                                   f"{limits.max_prompt_chars:,}: shorten it (CLIP reads 77 tokens)")
    return p


def _class(c, info) -> str:
    if not info.classes:
        raise RequestError(422, "text_pipeline", f"pipeline {info.name!r} is text-conditional: send \"prompts\"")
    if isinstance(c, bool) or not isinstance(c, str | int):
        raise RequestError(422, "bad_class", f"a class is a name or an index, got {json.dumps(c)[:60]}")
    from ..sampler import class_index

    try:
        return info.classes[class_index(info.classes, c, info.name)]
    except Tr0nError as e:
        raise RequestError(422, "unknown_class", str(e)[:400]) from None


def _embedding(e, i: int, info) -> np.ndarray:
    """One JSON embedding -> [d_c] float32, checked as Sampler.sample checks conditions (true/false refused)."""
    from ..sampler import MAX_CONDITION, check_conditions

    try:
        if not isinstance(e, list) or any(isinstance(v, bool) for v in e):
            raise PromptError("not a list of numbers")
        return check_conditions([e], info.cond_dim)[0]
    except Tr0nError as err:
        raise RequestError(422, "bad_embedding", f"embedding {i} must be a list of {info.cond_dim} finite numbers, "
                                                 f"each within +-{MAX_CONDITION:g} (a CLIP embedding or a one-hot "
                                                 f"class): {str(err)[:200]}") from None


def _image(v, i: int, size: int) -> np.ndarray:
    from ..images import clip_pixels

    if not isinstance(v, str):
        raise RequestError(422, "bad_image", f"image {i} must be a base64 string of a PNG, JPEG or WebP file")
    try:
        data = base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(422, "bad_image", f"image {i} is not valid base64") from None
    try:
        return clip_pixels(io.BytesIO(data), size)
    except Tr0nError as e:
        raise RequestError(422, "bad_image", f"image {i}: {str(e)[:300]}") from None


def info_body(info, limits: Limits, max_batch: int, batching: bool, config: SamplingConfig) -> dict:
    """GET /v1/info."""
    return {"pipeline": info.name, "condition": info.condition, "classes": info.classes,
            "image_input": bool(info.image_input), "cond_dim": info.cond_dim, "image_size": info.image_size,
            "settings": config.to_dict(), "presets": list(PRESETS), "limits": limits.as_dict(),
            "batching": {"enabled": batching, "max_batch_size": max_batch}}
