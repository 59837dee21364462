"""Markdown tables for RESULTS.md from the JSON files that quality.py and speed.py write.

    python benchmarks/results_tables.py benchmarks/quality-*.json benchmarks/speed-*.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def quality_table(results: list[dict]) -> str:
    """quality.py's JSON (world -> prompt sets -> rows) as one table: accuracy with its 95% Wilson interval,
    open-attribute diversity where the world's judge names attributes."""
    lines = [("| world | prompt set | T | method | schemes | judge accuracy (95% CI) | open-attribute diversity "
              "| ms / sample |"), "|---|---|---:|---|---|---|---:|---:|"]
    for r in results:
        for name, entry in r["sets"].items():
            for row in entry["rows"]:
                lo, hi = row["ci95"]
                div = "-" if row.get("diversity") is None else f"{row['diversity']:.3f}"
                lines.append(f"| {r['world']} | {name} | {row['steps']} | {row['method']} | {', '.join(row['schemes'])} "
                             f"| {row['accuracy']:.1%} ({lo:.1%} - {hi:.1%}) | {div} "
                             f"| {row['seconds_per_sample'] * 1e3:.1f} |")
    return "\n".join(lines)


def speed_table(results: list[dict]) -> str:
    lines = ["| pipeline | batch | A | backend | median ms | ratio to torch eager | rel err vs torch |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        for row in r["rows"]:
            lines.append(f"| {Path(r['pipeline']).name} | {row['batch']} | {row['copies']} | {row['backend']} | "
                         f"{row['median_ms']:.1f} | {row['ratio_to_torch']:.2f} | {row['max_rel_err_vs_torch']:.1e} |")
    return "\n".join(lines)


def main(paths: list[str]) -> int:
    loaded = [json.loads(Path(p).read_text()) for p in paths]
    quality = [d for d in loaded if "world" in d]
    speed = [d for d in loaded if "world" not in d and "rows" in d]
    if quality:
        print(quality_table(quality) + "\n")
        for d in quality:
            sets = ", ".join(f"{n} {e['queries']}" for n, e in d["sets"].items())
            c = d.get("coverage")
            cover = (f"; unconditional coverage {c['covered']}/{c['of']} (rarest seen {c['min_count']} times in "
                     f"{c['samples']})") if c else ""
            print(f"- {d['world']} ({d['backend']} {d['precision']}): queries per set {sets}, "
                  f"{d['samples_per_query']} samples each{cover}")
        print()
    if speed:
        print(speed_table(speed))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
