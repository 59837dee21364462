"""`tr0n-rt serve` on a local Ray cluster on the CPU (loopback only, every wait bounded): concurrent requests
form batches, every response is the image a direct `generate` makes (batched: within the README's
bounds across batch sizes, same judge verdicts; unbatched: bit for bit), a replica killed under load loses
no request, bad requests get 4xx. The request rules and routes without a cluster:
tests/test_serve_protocol.py."""
from __future__ import annotations

import concurrent.futures as cf
import io
import json
import socket
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # a Ray instance (~10 s to start) and a few hundred 25-step samplings

from tests.test_batch_invariance import LAYOUT_TOLERANCES, QUERIES, beyond_bounds
from tr0n_rt.serve.client import Client, ServeError

PROMPTS = QUERIES["shapes"]  # the prompts the README's bounds across batch sizes were measured on
REPLICAS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_command_serves_and_stops_gracefully():
    """`tr0n-rt serve` in its own process: SIGTERM while a request is in flight; that request is answered,
    a request sent while it stops gets 503 (which the client would retry), and the command exits 0.
    Runs before this module's cluster starts."""
    import signal
    import subprocess
    import sys
    import threading

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tr0n_rt.cli", "serve", "shapes", "--port", str(port), "--threads",
                             "1", "--cpus-per-replica", "0.5"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        client = Client(f"http://127.0.0.1:{port}", timeout=120, retries=0)
        client.wait_ready(timeout=120)
        held = {}
        call = threading.Thread(target=lambda: held.update(out=client.generate(["a red star"], samples=4,
                                                                                preset="paper")))
        call.start()
        time.sleep(1.0)  # the 100-step request is running
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        with pytest.raises(ServeError) as late:
            client.generate(["a blue circle"])
        call.join(timeout=120)
        assert len(held["out"]["images"]) == 4
        assert late.value.status == 503 and late.value.code == "shutting_down"
        assert proc.wait(timeout=120) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server():
    from tr0n_rt.serve.app import ServeOptions
    from tr0n_rt.serve.cli import start, stop
    from tr0n_rt.serve.protocol import Limits

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 << 20)
    try:
        # two replicas of half a CPU each (whole CPUs would leave none to Ray's own actors on 2 cores)
        start(ServeOptions("shapes", threads=1, max_batch=32, batch_wait_s=0.05,
                           limits=Limits(max_body_bytes=64 << 10, timeout_s=120)),
              port=port, replicas=REPLICAS, cpus=0.5)
        # a second application on the same proxy, made as `serve run` and KubeRay make it: batching off, /exact
        from ray import serve

        from tr0n_rt.serve.app import build_app

        serve.run(build_app({"pipeline": "shapes", "threads": "1", "batching": "false", "cpus": "0.25"}),
                  name="exact", route_prefix="/exact")
        client = Client(f"http://127.0.0.1:{port}", timeout=120, retries=6, backoff=0.5)
        client.wait_ready(timeout=120)
        yield client
    finally:
        stop()


@pytest.fixture(scope="module")
def direct():
    from tr0n_rt.judge import open_judge
    from tr0n_rt.paths import world_dir
    from tr0n_rt.sampler import Sampler

    return Sampler.open("shapes", threads=1), open_judge(world_dir("shapes"))


def check_matches_direct(direct, out: dict, prompt: str, seed: int, samples: int = 1) -> None:
    """A response (fast preset) against generate(prompt, seed) in this process: within the bounds the README
    states for any batch layout (ONNX Runtime fp32; both sides as 8-bit PNGs), the same verdicts."""
    from tr0n_rt.images import to_pil
    from tr0n_rt.judge import judge_images
    from tr0n_rt.settings import preset

    sampler, judge = direct
    want = sampler.generate([prompt], samples=samples, seed=seed, config=preset("fast"))
    got = np.stack([np.asarray(Image.open(io.BytesIO(Client.png(r)))) for r in out["images"]])
    ref = np.stack([np.asarray(to_pil(x)) for x in want.images])
    broken = beyond_bounds(LAYOUT_TOLERANCES["shapes", "fast"], None, got / 127.5, [r["energy"] for r in out["images"]],
                           None, ref / 127.5, want.energies)
    assert not broken, broken
    verdicts = judge_images(judge, want.images, [prompt] * samples)
    assert [r["judge"]["correct"] for r in out["images"]] == [v["correct"] for v in verdicts]
    assert [(r["prompt"], r["seed"], r["sample"]) for r in out["images"]] == \
        [(prompt, seed + j, j) for j in range(samples)]
    assert out["images"][0]["settings"] == preset("fast").to_dict()


def test_32_concurrent_requests_form_batches_and_match_direct_generate(server, direct):
    jobs = [(PROMPTS[i % len(PROMPTS)], 100 + i, 1 + i % 2) for i in range(32)]
    with cf.ThreadPoolExecutor(32) as pool:
        outs = list(pool.map(lambda j: server.generate([j[0]], seed=j[1], samples=j[2], preset="fast"), jobs))
    batches = {(o["replica"], r["batch"]["id"]): r["batch"]["rows"] for o in outs for r in o["images"]}
    images = sum(s for *_, s in jobs)
    # observed, not assumed: far fewer engine calls than requests, and batches of many rows
    assert len(batches) < len(jobs) / 2 and max(batches.values()) >= 8, batches
    assert sum(batches.values()) >= images  # every image was made in a batch that reports it
    for (prompt, seed, samples), out in zip(jobs, outs):
        check_matches_direct(direct, out, prompt, seed, samples)


def test_unbatched_requests_are_generate_bit_for_bit(server, direct):
    """Batching off: each request is one batch, as generate makes it, so the default settings (whose images
    move with the batch layout) give generate's PNGs byte for byte, under concurrency too."""
    from tr0n_rt.images import png_bytes, to_pil

    exact = Client(server.url + "/exact", timeout=120)
    jobs = [(PROMPTS[i % len(PROMPTS)], 900 + i, 1 + i % 3) for i in range(12)]
    with cf.ThreadPoolExecutor(12) as pool:
        outs = list(pool.map(lambda j: exact.generate([j[0]], seed=j[1], samples=j[2]), jobs))
    sampler, _ = direct
    for (prompt, seed, samples), out in zip(jobs, outs):
        want = sampler.generate([prompt], samples=samples, seed=seed)
        assert [Client.png(r) for r in out["images"]] == [png_bytes(to_pil(x)) for x in want.images]
        assert [r["energy"] for r in out["images"]] == [float(e) for e in want.energies]
        assert {r["batch"]["rows"] for r in out["images"]} == {samples}


def raw(server, method: str, path: str, body: bytes | None = None, ctype: str = "application/json"):
    req = urllib.request.Request(server.url + path, data=body, method=method, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_bad_requests_get_4xx_over_http(server):
    assert raw(server, "POST", "/v1/generate", b"{not json")[0] == 400
    assert raw(server, "POST", "/v1/generate", json.dumps({"prompts": ["a"], "sampels": 2}).encode())[0] == 400
    assert raw(server, "POST", "/v1/generate", json.dumps({"prompts": ["a"] * 40}).encode())[0] == 422
    assert raw(server, "POST", "/v1/generate", b"{}", ctype="text/plain")[0] == 415
    assert raw(server, "POST", "/v1/generate", b'{"prompts": ["' + b"a" * (70 << 10) + b'"]}')[0] == 413
    assert raw(server, "GET", "/v1/nothing")[0] == 404
    assert raw(server, "DELETE", "/v1/generate")[0] == 405
    status, info = raw(server, "GET", "/v1/info")
    assert status == 200 and info["batching"] == {"enabled": True, "max_batch_size": 32}
    before = server.attempts
    with pytest.raises(ServeError) as e:  # the client does not retry a 4xx
        server.generate(["a red star"], samples=17)
    assert e.value.status == 422 and e.value.code == "bad_samples" and server.attempts == before + 1


def replica_actors() -> list:
    from ray.util import list_named_actors

    return [a for a in list_named_actors(all_namespaces=True) if a["name"].startswith("SERVE_REPLICA::tr0n#")]


def test_a_replica_killed_under_load_loses_no_request(server, direct):
    """Kill one of the replicas while 32 requests are in flight: each is answered (by the other replica,
    or by retrying a 5xx / dropped connection), with the image a direct generate makes."""
    victims = replica_actors()
    assert len(victims) == REPLICAS
    jobs = [(PROMPTS[i % len(PROMPTS)], 500 + i) for i in range(32)]
    client = Client(server.url, timeout=120, retries=8, backoff=0.5)
    victim = ray.get_actor(victims[0]["name"], namespace=victims[0]["namespace"])
    with cf.ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(client.generate, [p], seed=s, samples=4, preset="fast") for p, s in jobs]
        time.sleep(0.5)  # 128 images queued on both replicas: several seconds of work
        ray.kill(victim, no_restart=True)
        outs = [f.result(timeout=300) for f in futures]
    print(f"{client.attempts} attempts for {len(jobs)} requests")
    assert client.attempts > len(jobs)  # the kill cost requests in flight, which were retried
    for (prompt, seed), out in zip(jobs, outs):
        check_matches_direct(direct, out, prompt, seed, samples=4)
    deadline = time.monotonic() + 120  # Serve replaces the replica
    while len(replica_actors()) < REPLICAS or not server.ready():
        assert time.monotonic() < deadline, "the killed replica was not replaced within 120 s"
        time.sleep(1.0)
