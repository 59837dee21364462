"""Markdown tables for RESULTS.md from the JSON files that quality.py and speed.py write.

    python benchmarks/results_tables.py benchmarks/quality-*.json benchmarks/speed-*.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def quality_table(results: list[dict]) -> str:
    lines = ["| world | backend | method | T | judge accuracy | ms / sample |", "|---|---|---|---|---|---|"]
    for r in results:
        backend = r["backend"] + ("" if r["backend"] == "torch" else f" {r['precision']}")
        for row in r["rows"]:
            lines.append(f"| {r['world']} | {backend} | {row['method']} | {row['steps']} | {row['accuracy']:.1%} "
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
            c = d["coverage"]
            print(f"- {d['world']}: {d['queries']} queries x {d['samples_per_query']} samples; unconditional "
                  f"coverage {c['covered']}/{c['of']} (rarest seen {c['min_count']} times in {c['samples']})")
        print()
    if speed:
        print(speed_table(speed))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
