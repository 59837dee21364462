"""PNG charts of benchmark JSON files, with the machine named in the title (Pillow only, no matplotlib).

    python benchmarks/chart.py bench.json --out bench.png                 # tr0n-rt bench
    python benchmarks/chart.py benchmarks/speed-shapes.json --out speed.png  # benchmarks/speed.py
    python benchmarks/chart.py benchmarks/reference-speed-shapes.json --out reference.png
Each input file becomes one sheet (several files: one PNG each, OUT's stem + the file's stem).
    tr0n-rt bench        images/s and Langevin step ms, per batch size and backend
    speed.py             step ms and images/s per step, per (batch, A) and backend
    reference_speed.py   images/s per configuration
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tr0n_rt.atomic import write_bytes
from tr0n_rt.bench import chart
from tr0n_rt.chart import bar_panel, stack
from tr0n_rt.images import png_bytes


def machine_name(result: dict) -> str:
    host = result.get("host") or result.get("machine")
    if isinstance(host, dict):
        return host.get("name") or str(host)
    return f"{host or '?'} ({result.get('cpus', '?')} CPUs, {result.get('torch_threads', '?')} torch threads)"


def speed_chart(result: dict):
    rows = result["rows"]
    shapes = list(dict.fromkeys((r["batch"], r["copies"]) for r in rows))
    names = list(dict.fromkeys(r["backend"] for r in rows))

    def series(key):
        return {n: [next((r[key] for r in rows if r["backend"] == n and (r["batch"], r["copies"]) == s), None)
                    for s in shapes] for n in names}
    groups = [f"B={b} A={a}" for b, a in shapes]
    title = f"Langevin step, {Path(result['pipeline']).name}, on {machine_name(result)}"
    return stack([bar_panel("median ms per step (lower is better)", "ms", groups, series("median_ms")),
                  bar_panel("images per second per step (higher is better)", "images/s", groups,
                            series("images_per_s_per_step"))], title)


def reference_chart(result: dict):
    rows = [r for r in result["rows"] if "images_per_s" in r]  # rows that failed (out of memory) have none
    title = f"reference loop vs tr0n-rt, {Path(result['pipeline']).name}, {result.get('prompts', '?')} prompts"
    panel = bar_panel("images per second (higher is better)", "images/s", [""],
                      {r["config"]: [r["images_per_s"]] for r in rows}, plot_width=600)
    return stack([panel], title)


def render(result: dict):
    """Any of the three result kinds -> a PIL image."""
    if "settings" in result and "machine" in result:
        return chart(result)
    if result.get("rows") and "median_ms" in result["rows"][0]:
        return speed_chart(result)
    if result.get("rows") and "images_per_s" in result["rows"][0]:
        return reference_chart(result)
    raise ValueError("not a tr0n-rt bench, speed.py or reference_speed.py result")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, nargs="+", help="JSON files")
    ap.add_argument("--out", type=Path, required=True, help="PNG file")
    args = ap.parse_args(argv)
    for path in args.results:
        out = args.out if len(args.results) == 1 else args.out.with_name(f"{args.out.stem}-{path.stem}.png")
        write_bytes(out, png_bytes(render(json.loads(path.read_text()))))
        print(f"{path} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
