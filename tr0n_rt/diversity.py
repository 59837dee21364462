"""How diverse a prompt's samples are in what the prompt leaves open.

For a world judge with the "words" rule (the shapes world: heads shape, colour, background), a prompt names
some heads' values and leaves the others open ("a star" leaves colour and background open). For each prompt
and open head:

    H_q,h   = entropy (nats) of the judge's predicted values of head h over the prompt's N samples
    H_prior = the mean entropy of N predictions drawn without replacement from the judge's predictions on
              unconditional samples G(z), z ~ N(0, I): what the generator itself gives at the same N
    diversity = H_q,h / H_prior     (1.0: as diverse as the generator; 0: one value in every sample)

Comparing at the same N matters: 4 samples can show at most 4 of 6 colours, so raw entropies of 4 and of
1000 samples are not comparable. The report is the mean over every (prompt, open head) pair, and per head.
A class judge (digits) has one head that every query names: nothing is open, and the report says so.
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np

PRIOR_SAMPLES = 512  # unconditional images judged for the prior
DRAWS = 400  # random N-subsets of the prior averaged for H_prior


def entropy(values) -> float:
    """Entropy (nats) of the empirical distribution of `values`."""
    counts = np.array(list(Counter(values).values()), dtype=np.float64)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def prior_entropy(values: list, n: int, draws: int = DRAWS, seed: int = 0) -> float:
    """Mean entropy of `draws` random n-subsets (without replacement) of the prior's values."""
    rng = np.random.default_rng(seed)
    values = np.asarray(values)
    n = min(n, len(values))
    return float(np.mean([entropy(values[rng.choice(len(values), n, replace=False)]) for _ in range(draws)]))


def open_attribute_diversity(queries: list[str], verdicts: list[dict], prior: list[dict],
                             heads: list[str]) -> dict:
    """queries[i] and verdicts[i] (word-rule verdicts: each head's prediction and what the query names,
    "wanted") for every sample; prior: verdicts on unconditional samples -> the report (module docstring)."""
    by_query: dict[str, list[dict]] = {}
    for q, v in zip(queries, verdicts):
        by_query.setdefault(q, []).append(v)
    cache: dict = {}
    pairs, per_head = [], {h: [] for h in heads}
    for q, vs in by_query.items():
        for h in heads:
            if vs[0]["wanted"].get(h) is not None:
                continue  # named by the prompt: not open
            key = (h, len(vs))
            if key not in cache:
                cache[key] = prior_entropy([v[h] for v in prior], len(vs))
            if cache[key] <= 0:
                continue  # the generator itself shows one value: nothing to spread
            d = entropy([v[h] for v in vs]) / cache[key]
            pairs.append(d)
            per_head[h].append(d)
    return {"defined": bool(pairs), "mean": float(np.mean(pairs)) if pairs else math.nan,
            "per_head": {h: float(np.mean(v)) for h, v in per_head.items() if v},
            "open_pairs": len(pairs), "prompts": len(by_query),
            "samples_per_prompt": sorted({len(vs) for vs in by_query.values()}),
            "prior_samples": len(prior),
            "prior_entropy": {f"{h}@{n}": round(e, 4) for (h, n), e in sorted(cache.items())},
            "method": "entropy of each open head over a prompt's samples / mean entropy of as many "
                      "unconditional samples (tr0n_rt/diversity.py)"}


def prior_verdicts(backend, judge, n: int = PRIOR_SAMPLES, batch: int = 64) -> list[dict]:
    """The judge's verdicts on n unconditional samples G(z), z ~ N(0, I) from the bundle's noise (stream
    INIT, seeds 0 .. n - 1), clipped to the latent bounds where there are any."""
    from . import noise

    d, bounds = backend.info.latent_dim, backend.info.latent_bounds
    out = []
    for start in range(0, n, batch):
        seeds = list(range(start, min(n, start + batch)))
        z = noise.normal(noise.check_seeds(seeds), noise.INIT, 0, (d,))
        if bounds is not None:
            z = np.clip(z, -bounds, bounds)
        images = backend.to_host(backend.run("generator", {"latent": z})["images"])
        out += judge.verdicts(images, [""] * len(seeds))
    return out
