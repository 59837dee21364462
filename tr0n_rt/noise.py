"""The host noise and the mixture arithmetic of sampling, specified so that any language reproduces them
bit for bit (docs/bundle-format.md, "Noise" and "Sampling"; its test vectors are checked in the tests).

Why this scheme: Philox4x32-10 (Salmon et al., SC 2011) is counter-based. A value is a pure function of
(seed, stream, step, index) with 32-bit integer multiplies and xors only, so C, C++ and CUDA compute it
exactly (cuRAND ships the same cipher), any value can be drawn without the ones before it (a GPU draws a
step's noise in parallel), and an image's noise depends only on its own seed, never on its batch.
Floating-point values are then formed with IEEE-754 basic operations only (+ - * / sqrt, frexp, ldexp,
in a stated order, no fused multiply-add), which every conforming implementation rounds identically;
library log/exp are not used, since their last bit differs between C libraries and numpy.

    key      (seed mod 2^32, seed div 2^32)                 seed in [0, 2^64)
    counter  (block j, step t, stream s, 0)                 block j gives words 4j .. 4j+3 of a draw
    uniform  (w >> 8) * 2^-24                               float32 in [0, 1), exact
    normal   float32(ndtri((w + 0.5) * 2^-32))              ndtri: Wichura's AS241 in float64, |z| <= 6.24
"""
from __future__ import annotations

import numpy as np

from .errors import ConfigError

VERSION = 1  # of this scheme; the bundle spec names it

# Streams: what a draw is for (the counter's third word).
INIT = 1  # prior init: z0 ~ N(0, I) [D]; sample mode: the noise of z0 ~ q(z | c) [D] (candidate j: step j)
COMPONENT = 2  # sample mode: the uniform that picks the mixture component [1] (candidate j: step j)
AUGMENT = 3  # DiffAugment numbers [A, 8] at step t (t = T: the final energy's)
SGLD = 4  # SGLD noise [K, D] at step t
START = 5  # sample mode: the extra start noise eps' [D] of candidate j (step j)

SEED_LIMIT = 1 << 64

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)  # Philox multipliers
_W0, _W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)  # Weyl key increments
_LOW = np.uint64(0xFFFFFFFF)
_32 = np.uint64(32)


def philox4x32(counter: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Philox4x32-10: counter uint32 [..., 4], key uint32 [..., 2] (broadcast) -> uint32 [..., 4]."""
    c = [np.asarray(counter, np.uint32)[..., i].astype(np.uint64) for i in range(4)]
    k0, k1 = (np.asarray(key, np.uint32)[..., i].astype(np.uint64) for i in range(2))
    for r in range(10):
        if r:
            k0, k1 = (k0 + _W0) & _LOW, (k1 + _W1) & _LOW
        p0, p1 = _M0 * c[0], _M1 * c[2]  # exact 64-bit products of 32-bit words
        c = [(p1 >> _32) ^ c[1] ^ k0, p1 & _LOW, (p0 >> _32) ^ c[3] ^ k1, p0 & _LOW]
    return np.stack(c, axis=-1).astype(np.uint32)


def check_seeds(seeds) -> np.ndarray:
    """Seeds as uint64 [B], or a ConfigError."""
    import numbers

    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, numbers.Integral) or not 0 <= s < SEED_LIMIT]
    if bad:
        raise ConfigError(f"seeds must be whole numbers in [0, 2^64), got {bad[:3]}")
    return np.array([int(s) for s in seeds], dtype=np.uint64)


def words(seeds: np.ndarray, stream: int, step: int, n: int) -> np.ndarray:
    """The first n words of draw (stream, step) for each seed: uint32 [B, n]."""
    seeds = np.asarray(seeds, np.uint64)
    blocks = -(-n // 4)
    counter = np.zeros((blocks, 4), np.uint32)
    counter[:, 0] = np.arange(blocks, dtype=np.uint32)
    counter[:, 1], counter[:, 2] = step, stream
    key = np.stack([(seeds & _LOW), seeds >> _32], axis=-1).astype(np.uint32)  # [B, 2]
    out = philox4x32(counter[None], key[:, None])  # [B, blocks, 4]
    return out.reshape(len(seeds), blocks * 4)[:, :n]


def uniform(seeds: np.ndarray, stream: int, step: int, shape: tuple[int, ...]) -> np.ndarray:
    """float32 [B, *shape] in [0, 1): (w >> 8) * 2^-24, row-major."""
    w = words(seeds, stream, step, int(np.prod(shape, dtype=np.int64)))
    return ((w >> np.uint32(8)).astype(np.float32) * np.float32(2.0 ** -24)).reshape(len(w), *shape)


def normal(seeds: np.ndarray, stream: int, step: int, shape: tuple[int, ...]) -> np.ndarray:
    """float32 [B, *shape], standard normal: float32(ndtri((w + 0.5) * 2^-32)), row-major."""
    w = words(seeds, stream, step, int(np.prod(shape, dtype=np.int64)))
    p = (w.astype(np.float64) + 0.5) * 2.0 ** -32  # exact: a multiple of 2^-33 in (0, 1)
    return ndtri(p).astype(np.float32).reshape(len(w), *shape)


# --- float64 arithmetic with IEEE basic operations only ------------------------------------------------
_LN2 = float.fromhex("0x1.62e42fefa39efp-1")  # ln 2, nearest float64
_LN2_HI = float.fromhex("0x1.62e42fee00000p-1")  # ln 2 = _LN2_HI + _LN2_LO; n * _LN2_HI exact for |n| < 2^11
_LN2_LO = float.fromhex("0x1.a39ef35793c76p-33")
_LOG2E = float.fromhex("0x1.71547652b82fep+0")  # 1 / ln 2, nearest float64
_SQRT_HALF = float.fromhex("0x1.6a09e667f3bcdp-1")
_LOG_COEFFS = [1.0 / (2 * k + 1) for k in range(12)]  # atanh series: 2 s (1 + s^2/3 + s^4/5 + ...)
_EXP_COEFFS = [1.0 / float(np.prod(np.arange(1, k + 1, dtype=np.float64))) for k in range(14)]  # 1/k!, k <= 13


def _horner(coeffs: list[float], x: np.ndarray) -> np.ndarray:
    """sum_k coeffs[k] x^k as (((c_n x + c_{n-1}) x + ...) x + c_0), each * and + rounded."""
    acc = np.full_like(x, coeffs[-1])
    for c in reversed(coeffs[:-1]):  # in place: the same roundings, no temporaries
        np.multiply(acc, x, out=acc)
        np.add(acc, c, out=acc)
    return acc


def log(x: np.ndarray) -> np.ndarray:
    """ln x for float64 x > 0 (normal numbers), to a few ulp: x = m 2^e, m in [sqrt(1/2), sqrt(2)),
    ln m = 2 atanh(s) with s = (m - 1) / (m + 1)."""
    m, e = np.frexp(np.asarray(x, np.float64))
    small = m < _SQRT_HALF
    m, e = np.where(small, m * 2.0, m), np.where(small, e - 1, e).astype(np.float64)
    f = m - 1.0
    s = f / (f + 2.0)
    return e * _LN2 + (2.0 * s) * _horner(_LOG_COEFFS, s * s)


def exp(x: np.ndarray) -> np.ndarray:
    """e^x for float64 x <= 0 (0 below -708), to a few ulp: x = n ln2 + r, |r| <= ln2 / 2 (Cody-Waite),
    e^r by its Taylor series to r^13."""
    x = np.asarray(x, np.float64)
    n = np.floor(x * _LOG2E + 0.5)
    r = (x - n * _LN2_HI) - n * _LN2_LO
    out = np.ldexp(_horner(_EXP_COEFFS, r), n.astype(np.int64).clip(-1100, 1100))
    return np.where(x < -708.0, 0.0, out)


# Wichura, AS241 (Applied Statistics 37(3), 1988): the inverse normal CDF, accurate to about 1e-16.
_A = [3.3871328727963666080e+0, 1.3314166789178437745e+2, 1.9715909503065514427e+3, 1.3731693765509461125e+4,
      4.5921953931549871457e+4, 6.7265770927008700853e+4, 3.3430575583588128105e+4, 2.5090809287301226727e+3]
_B = [1.0, 4.2313330701600911252e+1, 6.8718700749205790830e+2, 5.3941960214247511077e+3,
      2.1213794301586595867e+4, 3.9307895800092710610e+4, 2.8729085735721942674e+4, 5.2264952788528545610e+3]
_C = [1.42343711074968357734e+0, 4.63033784615654529590e+0, 5.76949722146069140550e+0, 3.64784832476320460504e+0,
      1.27045825245236838258e+0, 2.41780725177450611770e-1, 2.27238449892691845833e-2, 7.74545014278341407640e-4]
_D = [1.0, 2.05319162663775882187e+0, 1.67638483018380384940e+0, 6.89767334985100004550e-1,
      1.48103976427480074590e-1, 1.51986665636164571966e-2, 5.47593808499534494600e-4, 1.05075007164441684324e-9]
_E = [6.65790464350110377720e+0, 5.46378491116411436990e+0, 1.78482653991729133580e+0, 2.96560571828504891230e-1,
      2.65321895265761230930e-2, 1.24266094738807843860e-3, 2.71155556874348757815e-5, 2.01033439929228813265e-7]
_F = [1.0, 5.99832206555887937690e-1, 1.36929880922735805310e-1, 1.48753612908506148525e-2,
      7.86869131145613259100e-4, 1.84631831751005468180e-5, 1.42151175831644588870e-7, 2.04426310338993978564e-15]


def ndtri(p: np.ndarray) -> np.ndarray:
    """The standard normal quantile of float64 p in (0, 1) (AS241: three rational approximations)."""
    p = np.asarray(p, np.float64)
    q = p - 0.5
    z = np.empty_like(p)
    central = np.abs(q) <= 0.425
    qc = q[central]
    r = 0.180625 - qc * qc
    z[central] = qc * _horner(_A, r) / _horner(_B, r)
    tail = ~central
    if tail.any():
        qt = q[tail]
        r = np.sqrt(-log(np.where(qt < 0.0, p[tail], 1.0 - p[tail])))
        near = r <= 5.0
        rn, rf = r - 1.6, r - 5.0
        x = np.where(near, _horner(_C, rn) / _horner(_D, rn), _horner(_E, rf) / _horner(_F, rf))
        z[tail] = np.where(qt < 0.0, -x, x)
    return z


# --- the mixture arithmetic of sampling ----------------------------------------------------------------
def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """float64 softmax along `axis`: e_k = exp(l_k - max l), each divided by sum_k e_k summed in order
    k = 0, 1, ... (not pairwise)."""
    x = np.moveaxis(np.asarray(logits, np.float64), axis, 0)
    e = exp(x - x.max(axis=0))
    total = e[0].copy()
    for k in range(1, len(e)):
        total = total + e[k]
    return np.moveaxis(e / total, 0, axis)


def mix(logits: np.ndarray, means: np.ndarray) -> np.ndarray:
    """The final latent: sum_k softmax_k(logits) * means_k, per latent dimension. logits, means: float32
    [B, K, D] -> float32 [B, D]; float64 weights and products, summed in order k = 0, 1, ..."""
    w = softmax(logits, axis=1)
    m = np.asarray(means, np.float64)
    acc = w[:, 0] * m[:, 0]
    for k in range(1, m.shape[1]):
        acc = acc + w[:, k] * m[:, k]
    return acc.astype(np.float32)


def pick_component(probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Sample mode's component: the first k with u < p_0 + ... + p_k (cumulated in order; the last if
    rounding leaves none). probs float64 [B, K], u [B] -> int64 [B]."""
    cum = probs[:, 0].copy()
    pick = np.full(len(u), probs.shape[1] - 1, dtype=np.int64)
    chosen = np.zeros(len(u), dtype=bool)
    for k in range(probs.shape[1]):
        if k:
            cum = cum + probs[:, k]
        now = ~chosen & (u < cum)
        pick[now], chosen = k, chosen | now
    return pick
