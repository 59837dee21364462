"""A small client for `tr0n-rt serve`, standard library only (no Ray, no numpy needed to call it):

    from tr0n_rt.serve.client import Client
    client = Client("http://127.0.0.1:8000")
    client.wait_ready(timeout=120)
    out = client.generate(prompts=["a red star"], samples=4, seed=0)
    out["images"][0]["judge"], client.png(out["images"][0])      # the record, the PNG's bytes

Retries: an image is a function of its condition and seed, so a request is safe to repeat. The client
retries connection failures and 5xx answers (a replica that died, an overloaded or stopping server,
a timeout) with exponential backoff, up to `retries` times; a 4xx is the caller's mistake and raises
ServeError at once with the server's message.
"""
from __future__ import annotations

import base64
import http.client
import json
import time
import urllib.error
import urllib.request

from ..errors import Tr0nError


class ServeError(Tr0nError):
    """The server refused a request (4xx), or it kept failing (5xx or no connection) past the retries."""

    def __init__(self, status: int | None, code: str, message: str):
        super().__init__(f"{status or 'no answer'} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class Client:
    def __init__(self, url: str = "http://127.0.0.1:8000", timeout: float = 600.0, retries: int = 5,
                 backoff: float = 0.5):
        self.url, self.timeout, self.retries, self.backoff = url.rstrip("/"), timeout, retries, backoff
        self.attempts = 0  # requests sent, retries included (for tests and benchmarks)

    def generate(self, prompts: list[str] | None = None, *, classes: list | None = None,
                 embeddings: list | None = None, images: list[bytes] | None = None, samples: int = 1,
                 seed: int = 0, preset: str | None = None, mode: str | None = None, steps: int | None = None,
                 png: bool = True) -> dict:
        """Exactly one of prompts, classes, embeddings (lists of numbers) or images (encoded file bytes)."""
        body = {k: v for k, v in (("prompts", prompts), ("classes", classes), ("embeddings", embeddings))
                if v is not None}
        if images is not None:
            body["images"] = [base64.b64encode(b).decode("ascii") for b in images]
        body |= {"samples": samples, "seed": seed, "png": png}
        body |= {k: v for k, v in (("preset", preset), ("mode", mode), ("steps", steps)) if v is not None}
        return self.request("POST", "/v1/generate", body)

    def info(self) -> dict:
        return self.request("GET", "/v1/info")

    def ready(self) -> bool:
        try:
            return bool(self._once("GET", "/readyz", None).get("ready"))
        except (ServeError, OSError):
            return False

    def wait_ready(self, timeout: float = 120.0, poll: float = 0.5) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise ServeError(None, "not_ready", f"{self.url} was not ready within {timeout:g} s: is "
                                                    "`tr0n-rt serve` running, and did its replicas start?")
            time.sleep(poll)

    @staticmethod
    def png(record: dict) -> bytes:
        return base64.b64decode(record["png"])

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        """One call, retried on connection failures and 5xx with exponential backoff."""
        for attempt in range(self.retries + 1):
            try:
                return self._once(method, path, body)
            except ServeError as e:
                if (e.status is not None and e.status < 500) or attempt == self.retries:
                    raise
            time.sleep(self.backoff * 2 ** attempt)
        raise AssertionError("unreachable")

    def _once(self, method: str, path: str, body: dict | None) -> dict:
        self.attempts += 1
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise _served_error(e) from None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as e:
            raise ServeError(None, "no_connection", f"{self.url}: {getattr(e, 'reason', e)}") from None


def _served_error(e: urllib.error.HTTPError) -> ServeError:
    try:
        err = json.loads(e.read())["error"]
        return ServeError(e.code, err["code"], err["message"])
    except (ValueError, KeyError, TypeError, OSError):
        return ServeError(e.code, "http_error", str(e.reason)[:300])
