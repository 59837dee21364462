"""How diverse a prompt's samples are: in what the prompt leaves open, in pixels, in position and size,
and within a class. Every measure is normalised by the generator's own unconditional samples G(z),
z ~ N(0, I) (the prior, PRIOR_SAMPLES of them), compared at the same N: 1.0 is as diverse as the generator.

Open attributes. For a world judge with the "words" rule (the shapes world: heads shape, colour,
background), a prompt names some heads' values and leaves the others open ("a star" leaves colour and
background open). For each prompt and open head:

    H_q,h   = entropy (nats) of the judge's predicted values of head h over the prompt's N samples
    H_prior = the mean entropy of N predictions drawn without replacement from the judge's predictions on
              the prior's samples: what the generator itself gives at the same N
    diversity = H_q,h / H_prior     (1.0: as diverse as the generator; 0: one value in every sample)

Comparing at the same N matters: 4 samples can show at most 4 of 6 colours, so raw entropies of 4 and of
1000 samples are not comparable. The report is the mean over every (prompt, open head) pair, and per head.
A class judge (digits) has one head that every query names: nothing is open, and the report says so.

Distinct images (any world). Two images are the same when their mean absolute pixel difference (images in
[-1, 1]) is below DUPLICATE; the distinct images of a group are the connected components of that relation
(chains of near-copies are one image, so the count does not depend on the samples' order):

    f_q       = distinct(prompt's N samples) / N
    f_prior   = mean of distinct(S) / N over random N-subsets S of the prior's samples
    diversity = f_q / f_prior       (1/N / f_prior: every sample the same image)

Position and size (images on a plain background: the shapes world, the digits world). The background
colour is the per-channel median of the image's outermost ring of pixels (robust while the object covers
less than half of the ring); a pixel is foreground when its largest channel difference from it exceeds
half the image's largest such difference and at least MIN_CONTRAST (half the contrast: the mask does not
shrink for a faint object or grow with a soft edge). Of the mask, in image units:

    x, y = mean column, row of its pixel centres, ((j + 0.5) / W, (i + 0.5) / H): 0 top-left, 1 bottom-right
    size = sqrt(mask pixels / (H W))      (a square covering a fraction a of the image: sqrt(a))
    s_pos  = (std x + std y) / 2 and s_size = std size (population std) over a prompt's n samples
    diversity = s_q / (mean of the same std over random n-subsets of the prior's samples)

Images with an empty mask (no pixel above MIN_CONTRAST: a blank image) are skipped and counted; n is the
prompt's non-empty samples, so the prior is compared at that n; a prompt needs 2 of them.

Within a class (class judges: the digits world, every query names a class). The distance of two images

    d(a, b) = RMS difference of a and b average-pooled to POOL x POOL pixels per channel
    D_q       = mean d over the pairs of the prompt's samples that the judge assigns to its class
    D_prior,k = mean d over the pairs of the prior's samples that the judge assigns to class k
    diversity = D_q / D_prior,k

Why this distance: the digits world's images are sklearn's 8 x 8 digits upsampled to 32 x 32, so 8 x 8 is
the resolution their content has. Pooling to it drops the generator's sub-stroke texture and makes a stroke
moved by a pixel or two a small change, where pixel L2 at 32 x 32 scores a shifted stroke about as far as a
different stroke; what is left (stroke position, slant, thickness, loops open or closed) is what tells two
hand-written 3s apart. Nothing more semantic runs torch-free: the bundle's judge gives only probabilities,
and its softmax says how sure it is (the sampler drives that to 1 for every sample), not how samples
differ. The mean pairwise distance estimates E d(a, b) without bias for any n >= 2 (a U-statistic), so the
prior's mean over all pairs of class k equals the mean over its random n-subsets: the comparison is at
the same N with no subsetting. Limits: the distance is not perceptual (two styles of a 7, crossed or not,
count as far apart as the pixels they change, and differences finer than an 8 x 8 cell are not seen); a
class the generator seldom makes has few prior samples (512 / 10 each on average), so its D_prior is noisy;
samples the judge assigns to another class are left out (and counted), so a prompt that misses its class
is not rewarded for the spread of its mistakes.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

PRIOR_SAMPLES = 512  # unconditional images judged for the prior
DRAWS = 400  # random N-subsets of the prior averaged for H_prior, f_prior, s_prior
DUPLICATE = 0.02  # mean |a - b| (pixels in [-1, 1]) below which two images are the same image
MIN_CONTRAST = 0.1  # a foreground pixel differs from the background by more than this (pixels in [-1, 1])
POOL = 8  # within-class distances: images average-pooled to POOL x POOL per channel
PAIR_BYTES = 1 << 25  # working memory of one block of pairwise differences (32 MiB)


def entropy(values) -> float:
    """Entropy (nats) of the empirical distribution of `values`."""
    counts = np.array(list(Counter(values).values()), dtype=np.float64)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def prior_entropy(values: list, n: int, draws: int = DRAWS, seed: int = 0) -> float:
    """Mean entropy of `draws` random n-subsets (without replacement) of the prior's values."""
    values = np.asarray(values)
    return float(subset_mean(len(values), min(n, len(values)), lambda s: entropy(values[s]), draws, seed))


def subset_mean(n_total: int, n: int, stat, draws: int = DRAWS, seed: int = 0):
    """Mean of stat(indices) (a number or an array) over `draws` random n-subsets, without replacement, of
    range(n_total)."""
    rng = np.random.default_rng(seed)
    return np.mean([stat(rng.choice(n_total, n, replace=False)) for _ in range(draws)], 0)


def open_attribute_diversity(queries: list[str], verdicts: list[dict], prior: list[dict],
                             heads: list[str]) -> dict:
    """queries[i] and verdicts[i] (word-rule verdicts: each head's prediction and what the query names,
    "wanted") for every sample; prior: {head: predicted value} of unconditional samples -> the report
    (module docstring)."""
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


# --- image features: what the measures keep of a group of images ---------------------------------------
@dataclass
class ImageFeatures:
    """A group of n images (a prompt's samples, or the prior's) reduced to what the measures read."""

    same: np.ndarray  # [n, n] bool: mean |a - b| < DUPLICATE
    centroids: np.ndarray  # [n, 2] foreground centroid (x, y) in image units; nan: empty mask
    sizes: np.ndarray  # [n] sqrt(foreground fraction of the image); nan: empty mask
    pooled: np.ndarray  # [n, C * POOL * POOL] float32: the images average-pooled (within-class distances)

    def __len__(self) -> int:
        return len(self.sizes)


def image_features(images) -> ImageFeatures:
    """images [n, C, H, W] in [-1, 1] -> their ImageFeatures."""
    x = np.asarray(images, dtype=np.float32)
    centroids, sizes = foreground(x)
    return ImageFeatures(mean_abs_differences(x.reshape(len(x), -1)) < DUPLICATE, centroids, sizes, pooled(x))


def pairwise(flat: np.ndarray, distance) -> np.ndarray:
    """flat [n, D] -> [n, n] of distance(rows [b, 1, D] - flat [1, n, D]), a block of rows at a time so the
    differences take at most PAIR_BYTES."""
    n, d = flat.shape
    rows = max(1, PAIR_BYTES // (4 * n * d))
    return np.concatenate([distance(flat[i:i + rows, None, :] - flat[None, :, :]) for i in range(0, n, rows)])


def mean_abs_differences(flat: np.ndarray) -> np.ndarray:
    """flat [n, D] -> [n, n] mean |a - b| over the D values."""
    return pairwise(flat, lambda diff: np.abs(diff).mean(-1))


def rms_differences(flat: np.ndarray) -> np.ndarray:
    """flat [n, D] -> [n, n] sqrt(mean (a - b)^2) over the D values."""
    return pairwise(flat, lambda diff: np.sqrt((diff * diff).mean(-1)))


def distinct(same: np.ndarray) -> int:
    """The number of connected components of the graph whose edges are `same` [n, n] (union-find)."""
    parent = list(range(len(same)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    count = len(same)
    for i, j in zip(*np.nonzero(np.triu(same, 1))):
        a, b = root(int(i)), root(int(j))
        if a != b:
            parent[a] = b
            count -= 1
    return count


def foreground(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """images [n, C, H, W] in [-1, 1] -> centroids [n, 2] (x, y) and sizes [n], in image units, of each
    image's foreground mask (module docstring); nan for an empty mask."""
    n, _, h, w = images.shape
    ring = np.concatenate([images[:, :, 0, :], images[:, :, -1, :], images[:, :, :, 0], images[:, :, :, -1]], -1)
    background = np.median(ring, axis=-1)  # [n, C]
    contrast = np.abs(images - background[:, :, None, None]).max(1)  # [n, H, W] largest channel difference
    top = contrast.reshape(n, -1).max(-1)  # [n]
    mask = (contrast > np.maximum(top / 2, MIN_CONTRAST)[:, None, None]) & (top > MIN_CONTRAST)[:, None, None]
    area = mask.sum((1, 2)).astype(np.float64)  # [n] pixels
    with np.errstate(invalid="ignore", divide="ignore"):  # empty masks: 0 / 0 = nan, as meant
        x = (mask * ((np.arange(w) + 0.5) / w)[None, None, :]).sum((1, 2)) / area
        y = (mask * ((np.arange(h) + 0.5) / h)[None, :, None]).sum((1, 2)) / area
    sizes = np.where(area > 0, np.sqrt(area / (h * w)), np.nan)
    return np.stack([x, y], -1), sizes


def pooled(images: np.ndarray, side: int = POOL) -> np.ndarray:
    """images [n, C, H, W] -> [n, C * side * side]: the mean of each of side x side cells (cells of
    H // side or H // side + 1 rows when side does not divide H; the same for columns)."""
    n, _, h, w = images.shape
    rows = np.linspace(0, h, side + 1).astype(int)
    cols = np.linspace(0, w, side + 1).astype(int)
    sums = np.add.reduceat(np.add.reduceat(images, rows[:-1], axis=2), cols[:-1], axis=3)
    cells = np.diff(rows)[:, None] * np.diff(cols)[None, :]  # [side, side] pixels per cell
    return (sums / cells).reshape(n, -1).astype(np.float32)


class PromptImages:
    """Each prompt's images, kept only until its `samples` images are in, then reduced to ImageFeatures
    (eval samples a prompt's samples in a row, so about a batch of images is held at a time):

        gathered = PromptImages(8)
        gathered.add(prompt_keys, images [B, C, H, W], verdicts)   # any number of times
        gathered.groups()   # [(ImageFeatures, verdicts)] in the order the prompts were first seen
    """

    def __init__(self, samples: int):
        self.samples = samples
        self.pending: dict = {}  # key -> ([images], [verdicts]) of a prompt still short of `samples`
        self.reduced: dict = {}  # key -> (ImageFeatures, verdicts), None while pending; in first-seen order

    def add(self, keys: list, images, verdicts: list) -> None:
        for key, image, verdict in zip(keys, images, verdicts):
            kept, said = self.pending.setdefault(key, ([], []))
            kept.append(np.asarray(image, dtype=np.float32))
            said.append(verdict)
            self.reduced.setdefault(key, None)
            if len(kept) == self.samples:
                self.reduced[key] = (image_features(np.stack(kept)), said)
                del self.pending[key]

    def groups(self) -> list[tuple[ImageFeatures, list]]:
        """Every prompt's (features, verdicts), including any with fewer than `samples` images."""
        return [self.reduced[k] or (image_features(np.stack(self.pending[k][0])), self.pending[k][1])
                for k in self.reduced]


# --- the prior: the generator's own samples ---------------------------------------------------------------
@dataclass
class Prior:
    """The generator's unconditional samples: their features and the judge's prediction of every head."""

    features: ImageFeatures
    labels: list[dict]  # per sample {head: predicted value name}


def prior_samples(backend, judge, heads: dict[str, list[str]], n: int = PRIOR_SAMPLES, batch: int = 64) -> Prior:
    """n unconditional samples G(z), z ~ N(0, I) from the bundle's noise (stream INIT, seeds 0 .. n - 1),
    clipped to the latent bounds where there are any, judged (heads: {head: value names}, the judge's output
    order) and reduced to ImageFeatures. The images are held together once (n x C x H x W float32: 6 MiB
    for the worlds' 512 x 3 x 32 x 32)."""
    from . import noise

    d, bounds = backend.info.latent_dim, backend.info.latent_bounds
    images, labels = [], []
    for start in range(0, n, batch):
        seeds = list(range(start, min(n, start + batch)))
        z = noise.normal(noise.check_seeds(seeds), noise.INIT, 0, (d,))
        if bounds is not None:
            z = np.clip(z, -bounds, bounds)
        part = np.asarray(backend.to_host(backend.run("generator", {"latent": z})["images"]), dtype=np.float32)
        best = {h: p.argmax(-1) for h, p in judge.probabilities(part).items()}
        labels += [{h: heads[h][int(best[h][i])] for h in heads} for i in range(len(part))]
        images.append(part)
    return Prior(image_features(np.concatenate(images)), labels)


# --- the measures ---------------------------------------------------------------------------------------
def distinct_images(groups: list[ImageFeatures], prior: ImageFeatures) -> dict:
    """Distinct images per prompt, as a fraction of its samples, normalised by the prior's at the same N."""
    cache: dict[int, float] = {}
    fractions, ratios = [], []
    for g in groups:
        n = min(len(g), len(prior))
        if n not in cache:
            cache[n] = float(subset_mean(len(prior), n, lambda s: distinct(prior.same[np.ix_(s, s)]))) / n
        f = distinct(g.same) / len(g)
        fractions.append(f)
        ratios.append(f / cache[n])
    return {"defined": bool(groups), "mean": float(np.mean(ratios)) if ratios else math.nan,
            "fraction": float(np.mean(fractions)) if fractions else math.nan,
            "prompts": len(groups), "threshold": DUPLICATE,
            "prior_fraction": {f"@{n}": round(f, 4) for n, f in sorted(cache.items())},
            "method": f"distinct images among a prompt's samples (mean |a - b| < {DUPLICATE} is the same "
                      "image) / N, divided by the same for as many unconditional samples (tr0n_rt/diversity.py)"}


def spreads(centroids: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """[position std (mean of the x and y stds), size std] of n samples' centroids [n, 2] and sizes [n]."""
    return np.array([centroids.std(0).mean(), sizes.std()])


def position_size(groups: list[ImageFeatures], prior: ImageFeatures) -> dict:
    """Spread of the foreground's centroid and size per prompt, normalised by the prior's at the same n."""
    keep = ~np.isnan(prior.sizes)
    pc, ps = prior.centroids[keep], prior.sizes[keep]
    cache: dict[int, np.ndarray] = {}
    raw, ratios, skipped = [], [], 0
    for g in groups:
        ok = ~np.isnan(g.sizes)
        n = min(int(ok.sum()), len(ps))
        if n >= 2 and n not in cache:
            cache[n] = subset_mean(len(ps), n, lambda s: spreads(pc[s], ps[s]))
        if n < 2 or not (cache[n] > 0).all():
            skipped += 1  # fewer than 2 non-empty masks, or the generator itself does not spread
            continue
        s = spreads(g.centroids[ok], g.sizes[ok])
        raw.append(s)
        ratios.append(s / cache[n])
    mean = np.mean(ratios, 0) if ratios else np.full(2, math.nan)
    std = np.mean(raw, 0) if raw else np.full(2, math.nan)
    return {"defined": bool(ratios), "position": float(mean[0]), "size": float(mean[1]),
            "position_std": float(std[0]), "size_std": float(std[1]),
            "prompts": len(ratios), "skipped_prompts": skipped,
            "empty_masks": int(sum(np.isnan(g.sizes).sum() for g in groups)),
            "prior_empty_masks": int((~keep).sum()),
            "prior_std": {f"{k}@{n}": round(float(v), 4) for n, s in sorted(cache.items())
                          for k, v in zip(("position", "size"), s)},
            "method": "std of the foreground centroid (mean of x and y) and of sqrt(area), image units, over a "
                      "prompt's samples / the same over as many unconditional samples (tr0n_rt/diversity.py)"}


def mean_pair_distance(pooled_rows: np.ndarray) -> float:
    """Mean d(a, b) over the n (n - 1) / 2 pairs of pooled images [n, P]."""
    d = rms_differences(pooled_rows)
    return float(d[np.triu_indices(len(d), 1)].mean())


def within_class(groups: list[tuple[ImageFeatures, list[dict]]], prior: Prior, head: str) -> dict:
    """groups: per prompt its features and class verdicts ("target", "predicted"); head: the judge's only
    head -> mean pairwise pooled distance of the samples judged as the prompt's class, over the prior's
    for that class (module docstring), per class and the mean over prompts."""
    predicted = np.array([label[head] for label in prior.labels])
    cache: dict[str, float] = {}
    per_class: dict[str, list[float]] = {}
    ratios, excluded, skipped = [], 0, 0
    for features, verdicts in groups:
        k = verdicts[0]["target"]
        ok = np.array([v["predicted"] == k for v in verdicts])
        excluded += int((~ok).sum())
        if k not in cache:
            members = np.flatnonzero(predicted == k)
            cache[k] = mean_pair_distance(prior.features.pooled[members]) if len(members) >= 2 else math.nan
        if ok.sum() < 2 or not cache[k] > 0:
            skipped += 1
            continue
        r = mean_pair_distance(features.pooled[ok]) / cache[k]
        ratios.append(r)
        per_class.setdefault(k, []).append(r)
    return {"defined": bool(ratios), "mean": float(np.mean(ratios)) if ratios else math.nan,
            "per_class": {k: float(np.mean(v)) for k, v in sorted(per_class.items())},
            "prompts": len(ratios), "skipped_prompts": skipped, "excluded_samples": excluded,
            "prior_distance": {k: round(d, 4) for k, d in sorted(cache.items())},
            "prior_per_class": {k: int((predicted == k).sum()) for k in sorted(cache)},
            "method": f"mean RMS distance between a prompt's samples judged as its class, images average-"
                      f"pooled to {POOL} x {POOL}, / the same between unconditional samples judged as that "
                      "class (tr0n_rt/diversity.py)"}
