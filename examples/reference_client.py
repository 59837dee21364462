#!/usr/bin/env python3
"""A client of the tr0n-rt bundle format, version 2, following BUNDLE-FORMAT.md step by step.

It uses numpy, onnxruntime and the Python standard library, and never imports tr0n_rt: it is what an
embedder in another language writes, and CI checks that it reproduces `tr0n-rt sample` bit for bit.

    python examples/reference_client.py engines/shapes "a red star" "a blue circle" --samples 2 --out out_ref
    python examples/reference_client.py engines/digits 3 "digit seven" --precision fp16 --out out_ref

Writes OUT/000.png, 001.png, ... (row i * samples + j: query i, seed SEED + j), and OUT/client.json with
each image's query, seed and final energy. Sampling settings are the manifest's ("sampling"; sample
mode's `candidates` 1 and `start_noise` 0 when absent), with --steps, --copies, --mode, --candidates and
--start-noise as overrides.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import html
import json
import re
import struct
import sys
import unicodedata
import zlib
from pathlib import Path

import numpy as np
import onnxruntime as ort

FORMAT_VERSION = 2


class BundleProblem(Exception):
    pass


# --- the bundle: manifest, checksums, sessions -------------------------------------------------------
def open_bundle(folder: Path) -> dict:
    m = json.loads((folder / "manifest.json").read_text())
    if m.get("format") != "tr0n-rt.bundle" or m.get("schema_version") != FORMAT_VERSION:
        raise BundleProblem(f"{folder} is not a version {FORMAT_VERSION} tr0n-rt bundle "
                            f"(schema_version {m.get('schema_version')})")
    if m.get("noise") != {"scheme": "philox4x32-10", "version": 1}:
        raise BundleProblem(f"unknown noise scheme {m.get('noise')}")
    for name, meta in {**m["files"], **m["sources"]}.items():  # every file, checked before use
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleProblem(f"file name {name!r} leaves the bundle")
        data = (folder / name).read_bytes()
        if len(data) != meta["bytes"] or hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise BundleProblem(f"{name} does not match its sha256 in the manifest")
    return m


class Graphs:
    def __init__(self, folder: Path, manifest: dict, precision: str):
        self.folder, self.m, self.precision, self.sessions = folder, manifest, precision, {}
        settings = manifest["onnxruntime"]
        level = settings["graph_optimization_level"]
        if precision == "fp16":  # this client runs on the CPU
            level = settings["fp16_graphs_on_cpu"]["graph_optimization_level"]
        self.level = getattr(ort.GraphOptimizationLevel, level)

    def run(self, graph: str, feeds: dict) -> dict:
        if graph not in self.sessions:
            so = ort.SessionOptions()
            so.graph_optimization_level = self.level
            so.log_severity_level = 3
            file = self.m["graphs"][graph]["files"][self.precision]
            self.sessions[graph] = ort.InferenceSession(str(self.folder / file), so, providers=["CPUExecutionProvider"])
        s = self.sessions[graph]
        names = [o.name for o in s.get_outputs()]
        return dict(zip(names, s.run(names, feeds)))


# --- conditions: tokenizers and classes -------------------------------------------------------------
def letter_words(text: str) -> list[str]:
    """Lower-cased NFC text split into runs of letters (Unicode categories L*)."""
    text = unicodedata.normalize("NFC", text.lower())
    words, cur = [], []
    for ch in text:
        if unicodedata.category(ch).startswith("L"):
            cur.append(ch)
        elif cur:
            words.append("".join(cur))
            cur = []
    return words + (["".join(cur)] if cur else [])


def word_tokens(tok: dict, prompt: str) -> list[int]:
    vocab = tok["vocab"]
    ids = {w: i + 2 for i, w in enumerate(vocab)}  # 0 pad, 1 unknown, then the vocabulary
    aliases = tok.get("aliases", {})
    body = [ids.get(aliases.get(w, w), 1) for w in letter_words(prompt)]
    return [len(vocab) + 2] + body + [len(vocab) + 3]  # start, words, end


def bpe_tokens(tok: dict, folder: Path, prompt: str) -> list[int]:
    """CLIP's BPE for prompts of printable ASCII (the spec's full rule adds ftfy's text repair and
    Unicode letter classes, which this client leaves out and refuses)."""
    if not all(32 <= ord(c) < 127 for c in prompt):
        raise BundleProblem("this reference client tokenizes printable ASCII prompts only")
    lines = gzip.open(folder / tok["bpe_file"], "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(x.split()) for x in lines[1:49152 - 256 - 2 + 1]]
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_char = {b: chr(c) for b, c in zip(bs, cs)}
    vocab = [byte_char[b] for b in bs]
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<start_of_text>", "<end_of_text>"]
    enc, ranks = {v: i for i, v in enumerate(vocab)}, {m: i for i, m in enumerate(merges)}
    text = " ".join(html.unescape(html.unescape(prompt)).strip().split()).lower()
    ids = []
    for piece in re.findall(r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+", text):
        if piece in ("<start_of_text>", "<end_of_text>"):  # special tokens written in the text stay themselves
            ids.append(enc[piece])
            continue
        sym = [byte_char[b] for b in piece.encode("utf-8")]
        sym[-1] += "</w>"
        while len(sym) > 1:
            pairs = [(ranks.get(p, 1 << 30), i) for i, p in enumerate(zip(sym, sym[1:]))]
            best = min(pairs)[0]
            if best == 1 << 30:
                break
            a, b = merges[best]
            out, i = [], 0
            while i < len(sym):
                if i + 1 < len(sym) and sym[i] == a and sym[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            sym = out
        ids += [enc[s] for s in sym]
    return [enc["<start_of_text>"]] + ids + [enc["<end_of_text>"]]


def conditions(m: dict, folder: Path, graphs: Graphs, queries: list[str]) -> np.ndarray:
    if m["condition"]["kind"] == "class":
        names = m["condition"]["classes"]
        c = np.zeros((len(queries), len(names)), np.float32)
        for i, q in enumerate(queries):
            key = q.strip().lower()
            for prefix in ("digit ", "class "):
                key = key.removeprefix(prefix)
            c[i, names.index(key)] = 1.0
        return c
    tok = m["tokenizer"]
    n = tok["context_length"]
    rows = np.zeros((len(queries), n), np.int64)
    for i, q in enumerate(queries):
        t = word_tokens(tok, q) if tok["kind"] == "words" else bpe_tokens(tok, folder, q)
        if len(t) > n:  # too long: cut, the end token kept last
            t = t[:n - 1] + t[-1:]
        rows[i, :len(t)] = t
    return graphs.run("text_encoder", {"tokens": rows})["condition"]


# --- the noise scheme (spec: "Noise") ---------------------------------------------------------------
INIT, COMPONENT, AUGMENT, SGLD, START = 1, 2, 3, 4, 5


def philox(ctr, key):
    """Philox4x32-10 on uint64 arrays holding 32-bit words: ctr [..., 4], key [..., 2]."""
    mask = (1 << 32) - 1
    c0, c1, c2, c3 = (ctr[..., i] for i in range(4))
    k0, k1 = key[..., 0], key[..., 1]
    for r in range(10):
        p0, p1 = np.uint64(0xD2511F53) * c0, np.uint64(0xCD9E8D57) * c2
        c0, c1, c2, c3 = (p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & np.uint64(mask), (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & np.uint64(mask)
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & np.uint64(mask), (k1 + np.uint64(0xBB67AE85)) & np.uint64(mask)
    return np.stack([c0, c1, c2, c3], -1)


def draw_words(seeds: list[int], stream: int, step: int, n: int) -> np.ndarray:
    blocks = (n + 3) // 4
    ctr = np.zeros((1, blocks, 4), np.uint64)
    ctr[..., 0], ctr[..., 1], ctr[..., 2] = np.arange(blocks), step, stream
    key = np.array([[s % (1 << 32), s >> 32] for s in seeds], np.uint64)[:, None, :]
    return philox(ctr, key).reshape(len(seeds), -1)[:, :n]


def uniforms(seeds, stream, step, shape):
    w = draw_words(seeds, stream, step, int(np.prod(shape)))
    return ((w >> np.uint64(8)).astype(np.float32) * np.float32(2.0 ** -24)).reshape(len(seeds), *shape)


def horner(coeffs, x):
    acc = np.full_like(x, coeffs[-1])
    for c in coeffs[-2::-1]:
        acc = acc * x + c
    return acc


LN2 = float.fromhex("0x1.62e42fefa39efp-1")


def log64(x):
    m, e = np.frexp(x)
    low = m < float.fromhex("0x1.6a09e667f3bcdp-1")
    m = np.where(low, m * 2.0, m)
    e = np.where(low, e - 1, e).astype(np.float64)
    s = (m - 1.0) / ((m - 1.0) + 2.0)
    return e * LN2 + (2.0 * s) * horner([1.0 / (2 * k + 1) for k in range(12)], s * s)


def exp64(x):
    n = np.floor(x * float.fromhex("0x1.71547652b82fep+0") + 0.5)
    r = (x - n * float.fromhex("0x1.62e42fee00000p-1")) - n * float.fromhex("0x1.a39ef35793c76p-33")
    fact = [1.0]
    for k in range(1, 14):
        fact.append(fact[-1] * k)
    out = np.ldexp(horner([1.0 / f for f in fact], r), n.astype(np.int64))
    return np.where(x < -708.0, 0.0, out)


AS241 = {  # Wichura (1988), coefficients of x^0 .. x^7
    "a": [3.3871328727963666080e+0, 1.3314166789178437745e+2, 1.9715909503065514427e+3, 1.3731693765509461125e+4,
          4.5921953931549871457e+4, 6.7265770927008700853e+4, 3.3430575583588128105e+4, 2.5090809287301226727e+3],
    "b": [1.0, 4.2313330701600911252e+1, 6.8718700749205790830e+2, 5.3941960214247511077e+3,
          2.1213794301586595867e+4, 3.9307895800092710610e+4, 2.8729085735721942674e+4, 5.2264952788528545610e+3],
    "c": [1.42343711074968357734e+0, 4.63033784615654529590e+0, 5.76949722146069140550e+0, 3.64784832476320460504e+0,
          1.27045825245236838258e+0, 2.41780725177450611770e-1, 2.27238449892691845833e-2, 7.74545014278341407640e-4],
    "d": [1.0, 2.05319162663775882187e+0, 1.67638483018380384940e+0, 6.89767334985100004550e-1,
          1.48103976427480074590e-1, 1.51986665636164571966e-2, 5.47593808499534494600e-4, 1.05075007164441684324e-9],
    "e": [6.65790464350110377720e+0, 5.46378491116411436990e+0, 1.78482653991729133580e+0, 2.96560571828504891230e-1,
          2.65321895265761230930e-2, 1.24266094738807843860e-3, 2.71155556874348757815e-5, 2.01033439929228813265e-7],
    "f": [1.0, 5.99832206555887937690e-1, 1.36929880922735805310e-1, 1.48753612908506148525e-2,
          7.86869131145613259100e-4, 1.84631831751005468180e-5, 1.42151175831644588870e-7, 2.04426310338993978564e-15],
}


@np.errstate(all="ignore")  # every branch is computed for every value, then one is chosen
def normals(seeds, stream, step, shape):
    p = (draw_words(seeds, stream, step, int(np.prod(shape))).astype(np.float64) + 0.5) * 2.0 ** -32
    q = p - 0.5
    r = 0.180625 - q * q
    central = q * horner(AS241["a"], r) / horner(AS241["b"], r)
    t = np.sqrt(-log64(np.where(q < 0.0, p, 1.0 - p)))
    near = horner(AS241["c"], t - 1.6) / horner(AS241["d"], t - 1.6)
    far = horner(AS241["e"], t - 5.0) / horner(AS241["f"], t - 5.0)
    tail = np.where(t <= 5.0, near, far)
    z = np.where(np.abs(q) <= 0.425, central, np.where(q < 0.0, -tail, tail))
    return z.astype(np.float32).reshape(len(seeds), *shape)


def softmax64(logits, axis):
    x = np.moveaxis(logits.astype(np.float64), axis, 0)
    e = exp64(x - x.max(axis=0))
    total = e[0]
    for k in range(1, len(e)):
        total = total + e[k]
    return np.moveaxis(e / total, 0, axis)


# --- sampling (spec: "Sampling") ----------------------------------------------------------------------
IDENTITY_AUG = [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 2.0, 2.0]


def mixture(logits: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Section 6, step 4: the latent [B, D] of a mixture state [B, K, D] (float64 softmax, summed in order)."""
    w, mu = softmax64(logits, 1), means.astype(np.float64)
    acc = w[:, 0] * mu[:, 0]
    for k in range(1, mu.shape[1]):
        acc = acc + w[:, k] * mu[:, k]
    return acc.astype(np.float32)


def chunked_step(m: dict, graphs: Graphs, state: dict, latent: np.ndarray, fixed: dict, aug: np.ndarray,
                 sgld: np.ndarray, chunk: int):
    """Section 3, "The chunked step": generator, energy_grad per chunk of copies, update."""
    b, a = aug.shape[:2]
    images = graphs.run("generator", {"latent": latent})["images"]
    sums = {"grad_sum": np.zeros(images.shape, np.float32), "energy_sum": np.zeros(b, np.float32)}
    alpha = {"aesthetic_weight": fixed["aesthetic_weight"]} if "aesthetic_weight" in fixed else {}
    for start in range(0, a, chunk):
        out = graphs.run("energy_grad", {"images": images, "condition": fixed["condition"],
                                         "aug_noise": np.ascontiguousarray(aug[:, start:start + chunk]),
                                         "copies": np.array([a], np.float32), **sums, **alpha})
        sums = {"grad_sum": out["grad_sum_next"], "energy_sum": out["energy_sum_next"]}
    hparams = {k: v for k, v in fixed.items() if k != "condition"}
    out = graphs.run("update", {**state, **hparams, "grad_sum": sums["grad_sum"], "sgld_noise": sgld})
    return {k: out[k + "_next"] for k in state}, out["latent_next"]


def final_energy(graphs: Graphs, latent: np.ndarray, c: np.ndarray, aug: np.ndarray, chunk: int | None):
    """Section 6, step 4: the energy graph on all copies, or on chunks of them (weighted by m_j / A in float64)."""
    if chunk is None:
        return graphs.run("energy", {"latent": latent, "condition": c, "aug_noise": aug})["energy"]
    a, total = aug.shape[1], 0.0
    for start in range(0, a, chunk):
        part = np.ascontiguousarray(aug[:, start:start + chunk])
        e = graphs.run("energy", {"latent": latent, "condition": c, "aug_noise": part})["energy"]
        total = total + e.astype(np.float64) * (part.shape[1] / a)
    return total.astype(np.float32)


def sample_start(m: dict, seeds: list[int], cfg: dict, logits: np.ndarray, means: np.ndarray, std: np.ndarray,
                 score) -> np.ndarray:
    """Section 6, step 1, sample mode: z0 [B, D] from the translator's logits [B, K], means [B, K, D], std [D].
    Candidate j: a component by uniform(COMPONENT, j), z_j = means[k] + std * normal(INIT, j), plus
    float32(start_noise) * normal(START, j) when that is not 0, clamped to the latent's bounds; several
    candidates: the one of lowest score(z_j) [B] (the first of equals, NaN as +inf)."""
    b, d = len(seeds), m["latent"]["dim"]
    probs = softmax64(logits, 1)
    s = np.float32(cfg["start_noise"])
    bounds = m["latent"]["bounds"]
    draws = []
    for j in range(cfg["candidates"]):
        u = uniforms(seeds, COMPONENT, j, (1,))[:, 0]
        cum, pick = probs[:, 0], np.full(b, probs.shape[1] - 1)
        done = np.zeros(b, bool)
        for k in range(probs.shape[1]):
            if k:
                cum = cum + probs[:, k]
            hit = ~done & (u < cum)
            pick[hit], done = k, done | hit
        z = means[np.arange(b), pick] + std * normals(seeds, INIT, j, (d,))  # float32: product rounded, then sum
        if s != 0:
            z = z + s * normals(seeds, START, j, (d,))  # float32, the same way
        if bounds is not None:
            z = np.clip(z, -np.float32(bounds), np.float32(bounds))
        draws.append(z.astype(np.float32))
    if len(draws) == 1:
        return draws[0]
    energies = np.stack([np.asarray(score(z), np.float32) for z in draws])  # [candidates, B]
    best = np.where(np.isnan(energies), np.float32(np.inf), energies).argmin(axis=0)  # first of the lowest
    return np.stack(draws)[best, np.arange(b)]


def sample(m: dict, graphs: Graphs, c: np.ndarray, seeds: list[int], cfg: dict, chunk: int | None = None):
    b, d = len(seeds), m["latent"]["dim"]
    steps, copies = cfg["steps"], cfg["copies"]

    def aug_noise(t):
        if copies == 0:
            return np.tile(np.array(IDENTITY_AUG, np.float32), (b, 1, 1))
        return uniforms(seeds, AUGMENT, t, (copies, 8))

    if cfg["init"] == "prior":
        means = normals(seeds, INIT, 0, (1, d))
        if m["latent"]["bounds"] is not None:
            means = np.clip(means, -m["latent"]["bounds"], m["latent"]["bounds"])
        logits = np.zeros_like(means)
    else:
        tr = graphs.run("translator", {"condition": c})
        logits, means, std = tr["logits"], tr["means"], tr["std"]
        if cfg["mode"] == "mixture" and steps == 0:
            means, logits = means[np.arange(b), logits.argmax(1)][:, None], np.zeros((b, 1, d), np.float32)
        elif cfg["mode"] == "mixture":
            logits = np.repeat(logits[:, :, None], d, axis=2)
        else:
            z0 = sample_start(m, seeds, cfg, logits, means, std,  # candidates scored with step 0's aug_noise
                              lambda z: final_energy(graphs, z, c, aug_noise(0), chunk))
            means, logits = z0[:, None], np.zeros((b, 1, d), np.float32)
    energy = np.full(b, np.nan, np.float32)
    if steps == 0:
        latent = means[:, 0]
    else:
        state = {"means": means, "logits": logits, "velocity": np.zeros_like(means), "adam_m": np.zeros_like(means),
                 "adam_v": np.zeros_like(means), "step": np.zeros(1, np.float32)}
        fixed = {"condition": c, **{h: np.array([cfg[h]], np.float32) for h in
                                    ("latent_lr", "momentum", "noise_std", "logits_lr", "clip_norm", "adam_eps")}}
        if m["aesthetic"]:
            fixed["aesthetic_weight"] = np.array([cfg["aesthetic_weight"]], np.float32)
        latent = mixture(state["logits"], state["means"]) if chunk is not None else None
        for t in range(steps):
            sgld = normals(seeds, SGLD, t, state["means"].shape[1:])
            if chunk is not None:
                state, latent = chunked_step(m, graphs, state, latent, fixed, aug_noise(t), sgld, chunk)
                continue
            out = graphs.run("step", {**state, **fixed, "aug_noise": aug_noise(t), "sgld_noise": sgld})
            state = {k: out[k + "_next"] for k in state}
        latent = mixture(state["logits"], state["means"])
        energy = final_energy(graphs, latent, c, aug_noise(steps), chunk)
    return graphs.run("generator", {"latent": latent})["images"], latent, energy


# --- output --------------------------------------------------------------------------------------------
def png(image: np.ndarray) -> bytes:
    """[C, H, W] in [-1, 1] -> PNG bytes (8-bit RGB)."""
    x = np.clip((image + np.float32(1)) * np.float32(127.5) + np.float32(0.5), 0, 255).astype(np.uint8)
    x = np.repeat(x, 3, axis=0) if x.shape[0] == 1 else x
    h, w = x.shape[1:]
    raw = b"".join(b"\x00" + x[:, r].T.tobytes() for r in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


CANDIDATES = (1, 64)  # the ranges of tr0n_rt/settings.py's RANGES (and the manifest schema)
START_NOISE = (0.0, 100.0)


def start_settings_problem(cfg: dict) -> str | None:
    """What is wrong with sample mode's candidates and start_noise, or None."""
    n, s = cfg["candidates"], cfg["start_noise"]
    if isinstance(n, bool) or not isinstance(n, int) or not CANDIDATES[0] <= n <= CANDIDATES[1]:
        return f"candidates must be a whole number from {CANDIDATES[0]} to {CANDIDATES[1]}, got {n!r}"
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not START_NOISE[0] <= s <= START_NOISE[1]:
        return f"start_noise must be a number from {START_NOISE[0]:g} to {START_NOISE[1]:g}, got {s!r}"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("queries", nargs="+")
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16, help="images per graph run (as `tr0n-rt sample --batch`)")
    ap.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--copies", type=int, default=None)
    ap.add_argument("--mode", choices=["mixture", "sample"], default=None)
    ap.add_argument("--candidates", type=int, default=None,
                    help=f"sample mode: draws of z0 per image, {CANDIDATES[0]} to {CANDIDATES[1]}; the lowest energy "
                         "starts Langevin (manifest's sampling.candidates, 1 when absent)")
    ap.add_argument("--start-noise", type=float, default=None,
                    help=f"sample mode: std of extra noise on z0, {START_NOISE[0]:g} to {START_NOISE[1]:g} "
                         "(manifest's sampling.start_noise, 0 when absent)")
    ap.add_argument("--chunk", type=int, default=None, help="the chunked step, M copies per energy_grad run "
                                                             "(as the memory_plan of `tr0n-rt sample`'s JSON)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        m = open_bundle(args.bundle)
    except (BundleProblem, OSError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = {"candidates": 1, "start_noise": 0.0, **m["sampling"]}
    cfg.update({k: v for k, v in (("steps", args.steps), ("copies", args.copies), ("mode", args.mode),
                                  ("candidates", args.candidates), ("start_noise", args.start_noise)) if v is not None})
    problem = start_settings_problem(cfg)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    graphs = Graphs(args.bundle, m, args.precision)
    c = conditions(m, args.bundle, graphs, args.queries)
    rows = [(q, i, args.seed + j) for i, q in enumerate(args.queries) for j in range(args.samples)]
    args.out.mkdir(parents=True, exist_ok=True)
    records = []
    for start in range(0, len(rows), args.batch):
        part = rows[start:start + args.batch]
        chunk = None if args.chunk is None else min(args.chunk, max(cfg["copies"], 1))
        images, _, energy = sample(m, graphs, c[[i for _, i, _ in part]], [s for *_, s in part], cfg, chunk)
        for r, (q, _, seed) in enumerate(part):
            name = f"{start + r:03d}.png"
            (args.out / name).write_bytes(png(images[r]))
            records.append({"query": q, "seed": seed, "energy": float(energy[r]), "file": name})
    (args.out / "client.json").write_text(json.dumps({"images": records}, indent=2) + "\n")
    print(f"{len(records)} images in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
