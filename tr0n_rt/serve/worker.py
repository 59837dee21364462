"""What one serving replica does, without Ray: open the pipeline once, check requests against it, and run
a batch of rows from any number of requests as few sampler calls as possible.

Rows are grouped by (settings, translator); each group is encoded (one text, class or image encoder run
for its distinct conditions) and sampled in one `Sampler.sample` call, which splits it further only if
the memory plan says so. An image depends on its condition and seed only, up to the kernels' rounding
with the batch size and row position (README, "Batch invariance"; docs/bundle-format.md section 7).
"""
from __future__ import annotations

import itertools
import time
from collections import defaultdict

import numpy as np

from ..errors import PromptError, Tr0nError
from .protocol import (
    Job,
    Limits,
    RequestError,
    Row,
    RowResult,
    parse_generate,
    parse_json,
)


class Worker:
    """One pipeline, one backend. Not thread-safe: the replica calls `run` from one thread at a time."""

    def __init__(self, pipeline: str, backend: str = "auto", device: str = "cpu", precision: str = "fp32",
                 threads: int | None = None, limits: Limits | None = None, judge: bool = True):
        from ..judge import open_judge
        from ..paths import pipeline_path
        from ..sampler import Sampler

        self.folder = pipeline_path(pipeline)
        self.sampler = Sampler.open(self.folder, backend=backend, device=device, precision=precision,
                                    threads=threads)
        self.info = self.sampler.info
        self.limits = limits or Limits()
        self.judge = open_judge(self.folder) if judge else None
        self._batches = itertools.count()

    def parse(self, body: bytes) -> Job:
        """A request body -> a Job, or a RequestError (4xx) before any engine work but tokenizing."""
        job = parse_generate(parse_json(body, self.limits), self.info, self.limits, self.sampler.config)
        if job.key == "prompt":
            try:
                self.sampler.tokenizer(job.inputs, allow_empty=False)
            except PromptError as e:
                raise RequestError(422, "bad_prompt", str(e)[:300]) from None
        if job.config.aesthetic_weight and not self.info.aesthetic:
            raise RequestError(422, "no_aesthetic_head", f"pipeline {self.info.name!r} has no aesthetic head")
        return job

    def run(self, rows: list[Row]) -> list[RowResult]:
        """Rows from any requests -> their results, in order. One batch id for all of them."""
        batch = {"id": next(self._batches), "rows": len(rows)}
        groups: dict[tuple, list[int]] = defaultdict(list)
        for n, row in enumerate(rows):
            groups[row.group].append(n)
        out: list[RowResult | None] = [None] * len(rows)
        for (config, translator), members in groups.items():
            part = [rows[n] for n in members]
            for n, res in zip(members, self._sample(part, config, translator, batch)):
                out[n] = res
        return out

    def _sample(self, rows: list[Row], config, translator: str, batch: dict) -> list[RowResult]:
        from ..images import png_bytes, to_pil
        from ..judge import judge_images

        tick = time.perf_counter()
        conditions = self._conditions(rows)
        encode = time.perf_counter() - tick
        out = self.sampler.sample(conditions, [r.seed for r in rows], config, translator)
        verdicts = judge_images(self.judge, out.images, [r.judged for r in rows])
        seconds = {"encode": encode, **out.seconds}
        per_image = {k: round(v / len(rows), 4) for k, v in seconds.items()}
        return [RowResult(png_bytes(to_pil(out.images[r])), float(out.energies[r]), per_image, verdicts[r], batch,
                          None if out.aesthetic is None else float(out.aesthetic[r]), out.images[r])
                for r in range(len(rows))]

    def _conditions(self, rows: list[Row]) -> np.ndarray:
        """Rows of one kind or several -> conditions [N, d_c]; each distinct prompt or class encoded once."""
        c = np.empty((len(rows), self.info.cond_dim), dtype=np.float32)
        by_kind: dict[str, list[int]] = defaultdict(list)
        for n, row in enumerate(rows):
            by_kind[row.kind].append(n)
        for kind, members in by_kind.items():
            if kind in ("prompt", "class"):
                distinct = list(dict.fromkeys(rows[n].value for n in members))
                enc = (self.sampler.encode_text if kind == "prompt" else self.sampler.encode_classes)(distinct)
                c[members] = enc[[distinct.index(rows[n].value) for n in members]]
            elif kind == "embedding":
                c[members] = np.stack([rows[n].value for n in members])
            else:
                c[members] = self.sampler.encode_images(np.stack([rows[n].value for n in members]))
        return c

    def warm_up(self) -> None:
        """One image from a zero condition at the default settings: loads the sampling graphs before the
        first request."""
        zero = np.zeros(self.info.cond_dim, dtype=np.float32)
        self.run([Row("embedding", zero, 0, self.sampler.config, "translator", None)])


def server_error(e: BaseException) -> RequestError:
    """An engine failure -> 500 (a Tr0nError says what went wrong; anything else is a bug)."""
    what = str(e)[:300] if isinstance(e, Tr0nError) else f"{type(e).__name__}: {str(e)[:200]}"
    return RequestError(500, "engine_error", f"the engine failed on this batch ({what}); retry, and report it if "
                                             "it persists")
