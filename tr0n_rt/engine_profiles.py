"""TensorRT optimisation profiles as the manifest's engine stamps list them: static shapes, one profile per
batch x copies x components (min = opt = max), the concrete input shapes of one, and which built
profile serves a call (its batch padded up to the next built size). The build side plans them
(export/engines.py), the TensorRT backend selects them."""
from __future__ import annotations

from pathlib import Path

from .errors import BackendError, BundleError
from .graphs import DYNAMIC_AXES


def concrete_shape(dims: list, sizes: dict) -> list[int]:
    """Manifest dims (ints, or axis names) with the axes replaced by sizes[name]."""
    out = []
    for d in dims:
        if isinstance(d, str):
            if d not in sizes:
                raise BundleError(f"dynamic axis {d!r} has no size (known: {', '.join(sizes) or '-'}); "
                                  f"the engines know the axes {', '.join(DYNAMIC_AXES)}")
            out.append(int(sizes[d]))
        else:
            out.append(int(d))
    return out


def pick_batch(batch: int, sizes) -> int:
    """The smallest built batch size >= batch (the call is padded up to it), or a BackendError."""
    fits = sorted(s for s in sizes if s >= batch)
    if not fits:
        raise BackendError(f"batch {batch} is larger than every engine profile ({', '.join(map(str, sorted(sizes)))}); "
                           f"rebuild the engines with `--batch {batch}` or sample in smaller batches")
    return fits[0]


def select_profile(stamp: dict, batch: int, copies: int | None = None, components: int | None = None,
                   bundle: str | Path = "BUNDLE") -> tuple[int, dict]:
    """(profile index, profile) for a call: the profile whose copies and components are the call's and
    whose batch is the smallest >= batch (the call is padded up to it)."""
    want = {"copies": copies, "components": components}
    fits = [(i, p) for i, p in enumerate(stamp["profiles"])
            if all(p.get(a) is None or want[a] is None or p[a] == want[a] for a in want)]
    if not fits:
        built = sorted({tuple((a, p.get(a)) for a in want if p.get(a) is not None) for p in stamp["profiles"]})
        asked = ", ".join(f"{a}={v}" for a, v in want.items() if v is not None)
        raise BackendError(f"no engine profile for {asked} (built: {built}); rebuild with "
                           f"`tr0n-rt build {bundle} --copies A --components K` for the sampling you use")
    b = pick_batch(batch, {p["batch"] for _, p in fits})
    return next((i, p) for i, p in fits if p["batch"] == b)
