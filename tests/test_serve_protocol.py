"""`tr0n-rt serve` without a cluster: the request rules (protocol.py), the replica's routes, limits and
errors called in-process (batching off: Ray Serve's batch queue needs a running replica), and the
worker's batches against direct `generate`. The cluster itself: tests/test_serve.py."""
from __future__ import annotations

import asyncio
import base64
import io
import json
from dataclasses import asdict, replace

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tr0n_rt.serve.protocol import Limits, RequestError, parse_generate, parse_json
from tr0n_rt.serve.worker import Worker

pytest.importorskip("starlette")


@pytest.fixture(scope="module")
def worker():
    return Worker("shapes", threads=1)


@pytest.fixture(scope="module")
def digits():
    return Worker("digits", threads=1)


def job(worker, **body):
    return worker.parse(json.dumps(body).encode())


def refused(worker, body) -> RequestError:
    with pytest.raises(RequestError) as e:
        worker.parse(body if isinstance(body, bytes) else json.dumps(body).encode())
    return e.value


@pytest.mark.parametrize("body,status,code", [
    (b"{", 400, "bad_json"), (b"\xff", 400, "bad_json"), (b"[1]", 400, "bad_json"), (b"[" * 100_000, 400, "bad_json"),
    ({"prompt": ["a red star"]}, 400, "unknown_field"), ({}, 400, "no_condition"),
    ({"prompts": ["a star"], "embeddings": [[0.0] * 64]}, 400, "two_conditions"),
    ({"prompts": "a red star"}, 400, "bad_prompts"), ({"prompts": []}, 400, "bad_prompts"),
    ({"prompts": ["a"] * 17}, 422, "too_many_conditions"),
    ({"prompts": ["a red star"], "samples": 0}, 422, "bad_samples"),
    ({"prompts": ["a red star"], "samples": True}, 422, "bad_samples"),
    ({"prompts": ["a red star"] * 5, "samples": 16}, 422, "too_many_images"),
    ({"prompts": ["a red star"], "seed": -1}, 422, "bad_seed"),
    ({"prompts": ["a red star"], "seed": 2 ** 64 - 1, "samples": 2}, 422, "bad_seed"),
    ({"prompts": ["a red star"], "seed": 1.5}, 422, "bad_seed"),
    ({"prompts": ["a red star"], "steps": 201}, 422, "bad_steps"),
    ({"prompts": ["a red star"], "preset": "slow"}, 422, "bad_preset"),
    ({"prompts": ["a red star"], "mode": "chain"}, 422, "bad_mode"),
    ({"prompts": ["a red star"], "png": "yes"}, 422, "bad_png"),
    ({"prompts": [""]}, 422, "bad_prompt"), ({"prompts": [3]}, 422, "bad_prompt"),
    ({"prompts": ["!!!"]}, 422, "bad_prompt"), ({"prompts": ["a" * 1001]}, 422, "prompt_too_long"),
    ({"classes": ["3"]}, 422, "text_pipeline"),
    ({"embeddings": [[0.0] * 63]}, 422, "bad_embedding"), ({"embeddings": [[1e5] + [0.0] * 63]}, 422, "bad_embedding"),
    ({"embeddings": [["x"] * 64]}, 422, "bad_embedding"),
    ({"images": ["not base64!"]}, 422, "bad_image"), ({"images": [base64.b64encode(b"GIF89a").decode()]}, 422,
                                                      "bad_image"),
])
def test_bad_requests_are_refused_with_a_status_and_a_code(worker, body, status, code):
    e = refused(worker, body)
    assert (e.status, e.code) == (status, code), e.message
    assert e.body() == {"error": {"status": status, "code": code, "message": e.message}}


def test_class_pipelines_take_classes_only(digits):
    assert job(digits, classes=["3", "digit 7", 2]).labels == ["3", "7", "2"]
    assert refused(digits, {"classes": ["11"]}).code == "unknown_class"
    assert refused(digits, {"prompts": ["a three"]}).code == "class_pipeline"
    assert refused(digits, {"images": ["AAAA"]}).code == "no_image_input"


def test_a_job_is_rows_in_the_order_of_tr0n_rt_sample(worker):
    j = job(worker, prompts=["a red star", "a blue circle"], samples=3, seed=10, steps=5)
    assert [(r.value, r.seed) for r in j.rows()] == [(p, 10 + s) for p in ("a red star", "a blue circle")
                                                     for s in range(3)]
    assert j.config.steps == 5 and job(worker, prompts=["a"], preset="paper", steps=7).config.copies == 50
    with pytest.raises(RequestError, match="runs 100 steps, more than this server's 50") as e:
        parse_generate({"prompts": ["a"], "preset": "paper"}, worker.info, Limits(max_steps=50), worker.sampler.config)
    assert e.value.code == "too_many_steps"


def test_the_body_limit_is_checked_before_parsing():
    with pytest.raises(RequestError) as e:
        parse_json(b"{}" + b" " * 100, Limits(max_body_bytes=50))
    assert e.value.status == 413


def test_rows_of_many_requests_in_one_batch_are_the_images_of_generate(worker, tmp_path):
    """One worker batch mixing prompts, an image and an embedding, at two settings (the fast preset, where the
    README states its bounds across batch sizes): every image within those bounds of a direct generate of
    its own request (ONNX Runtime fp32), same verdicts."""
    from tests.test_batch_invariance import TOLERANCES

    star = tmp_path / "star.png"
    picture = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(picture).polygon([(32, 4), (40, 26), (62, 26), (44, 40), (52, 62), (32, 48), (12, 62), (20, 40),
                                     (2, 26), (24, 26)], fill="red")
    picture.save(star)
    emb = worker.sampler.encode_text(["a green square"])[0]
    fast = {"preset": "fast"}
    jobs = [job(worker, prompts=["a red star", "a blue circle"], samples=2, seed=3, **fast),
            job(worker, images=[base64.b64encode(star.read_bytes()).decode()], seed=1, **fast),
            job(worker, embeddings=[emb.tolist()], samples=2, seed=5, **fast),
            job(worker, prompts=["a yellow cross"], steps=5, **fast)]
    rows = [r for j in jobs for r in j.rows()]
    results = worker.run(rows)
    assert {r.batch["id"] for r in results} == {results[0].batch["id"]} and results[0].batch["rows"] == 8
    bounds = TOLERANCES["onnxruntime", "fp32"]
    done = 0
    for j in jobs:
        mine = results[done:done + len(j.rows())]
        done += len(j.rows())
        direct = generate_directly(worker, j, star)
        gap = np.abs(np.stack([r.pixels for r in mine]) - direct.images)
        assert gap.max() <= bounds["image_max"] and gap.mean() <= bounds["image_mean"]
        assert np.abs(np.array([r.energy for r in mine]) - direct.energies).max() <= bounds["energy"]
        records = j.records(mine)
        assert [r["seed"] for r in records] == list(direct.seeds)
        assert all(r["settings"] == j.config.to_dict() for r in records)
        png = np.asarray(Image.open(io.BytesIO(base64.b64decode(records[0]["png"]))))
        assert png.shape == (worker.info.image_size, worker.info.image_size, 3)
        if j.key == "prompt":
            from tr0n_rt.judge import judge_images

            want = judge_images(worker.judge, direct.images, [r.judged for r in j.rows()])
            assert [r["judge"]["correct"] for r in records] == [v["correct"] for v in want]


def generate_directly(worker, j, image_file):
    given = {"prompt": "prompts", "image": "images", "embedding": "embeddings", "class": "classes"}[j.key]
    value = {"image": [image_file], "embedding": np.stack(j.inputs) if j.key == "embedding" else None}.get(j.key, j.inputs)
    return worker.sampler.generate(**{given: value}, samples=j.samples, seed=j.seed, config=j.config)


def test_a_request_run_as_its_own_batch_is_generate_bit_for_bit(worker, digits):
    """Batching off runs each request's rows as one batch, in generate's order: the same bits, PNGs and all,
    in the default mode (whose images are sensitive to the batch layout: README, "Batch invariance")."""
    from tr0n_rt.images import png_bytes, to_pil

    for w, body in ((worker, {"prompts": ["a star", "a red shape on a black background"], "samples": 3, "seed": 7}),
                    (digits, {"classes": ["4", "9"], "samples": 2, "seed": 11})):
        j = job(w, **body)
        got = w.run(j.rows())
        direct = generate_directly(w, j, None)
        assert [r.png for r in got] == [png_bytes(to_pil(x)) for x in direct.images]
        assert np.array_equal(np.array([r.energy for r in got], np.float32), direct.energies)


# --- the replica's HTTP handling, in-process ----------------------------------------------------------
@pytest.fixture(scope="module")
def replica():
    pytest.importorskip("ray")
    from tr0n_rt.serve.app import ServeOptions, Tr0nServer

    o = ServeOptions("shapes", threads=1, batching=False, limits=Limits(max_body_bytes=2048, timeout_s=60))
    return Tr0nServer({**asdict(o), "limits": o.limits.as_dict()})


def call(server, method, path, body=b"", headers=(("content-type", "application/json"),), chunks=None):
    """server(request) for a starlette Request built from an ASGI scope; chunks: the body in pieces."""
    from starlette.requests import Request

    parts = list(chunks) if chunks is not None else [body]
    scope = {"type": "http", "method": method, "path": path, "query_string": b"",
             "headers": [(k.encode(), v.encode()) for k, v in headers]}

    async def receive():
        if parts:
            return {"type": "http.request", "body": parts.pop(0), "more_body": bool(parts)}
        return {"type": "http.disconnect"}

    r = asyncio.run(server(Request(scope, receive)))
    return r.status_code, json.loads(r.body)


def test_routes_health_readiness_and_info(replica):
    assert call(replica, "GET", "/healthz")[0] == 200
    status, ready = call(replica, "GET", "/readyz")
    assert status == 200 and ready["ready"] and ready["pipeline"] == "shapes"
    status, info = call(replica, "GET", "/v1/info")
    assert status == 200 and info["condition"] == "text" and info["limits"]["max_body_bytes"] == 2048
    assert call(replica, "GET", "/v2/generate")[0] == 404
    assert call(replica, "GET", "/v1/generate")[0] == 405
    status, out = call(replica, "POST", "/v1/generate", json.dumps({"prompts": ["a red star"], "samples": 2}).encode())
    assert status == 200 and [r["sample"] for r in out["images"]] == [0, 1] and out["images"][0]["judge"]["correct"]


def test_http_errors_are_typed_before_any_work(replica):
    post = "POST", "/v1/generate"
    assert call(replica, *post, b"{}", headers=[("content-type", "text/plain")])[1]["error"]["code"] == \
        "unsupported_media_type"
    status, err = call(replica, *post, b"{}", headers=[("content-type", "application/json"), ("content-length", "4096")])
    assert (status, err["error"]["code"]) == (413, "body_too_large")  # refused from the header, unread
    status, err = call(replica, *post, chunks=[b"{" + b" " * 1500, b" " * 1500 + b"}"])  # no length: counted
    assert status == 413
    status, err = call(replica, *post, json.dumps({"prompts": ["a red star"], "samples": 99}).encode())
    assert (status, err["error"]["code"]) == (422, "bad_samples") and "1 to 16" in err["error"]["message"]


def test_a_request_past_its_timeout_gets_504(replica):
    slow = replace(replica.options, limits=replace(replica.options.limits, timeout_s=1e-3))
    replica.options, saved = slow, replica.options
    try:
        status, err = call(replica, "POST", "/v1/generate", json.dumps({"prompts": ["a red star"]}).encode())
    finally:
        replica.options = saved
    assert (status, err["error"]["code"]) == (504, "timeout")
