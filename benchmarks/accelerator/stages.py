#!/usr/bin/env python3
"""Mean time per TTFT stage from Prometheus text files, one column per file:
stages.py off.metrics.txt on.metrics.txt"""
import re
import sys

STAGES = ["tokenize", "admission", "engine_queue", "prefill", "first_token_after_admission"]
PATTERN = re.compile(r'^sluice:ttft_stage_seconds_(sum|count)\{stage="([a-z_]+)"\} ([0-9.e+-]+)$')


def stage_means(path):
    sums, counts = {}, {}
    with open(path) as f:
        for line in f:
            m = PATTERN.match(line.strip())
            if m:
                (sums if m.group(1) == "sum" else counts)[m.group(2)] = float(m.group(3))
    return {s: sums[s] / counts[s] for s in STAGES if counts.get(s)}


def main(paths):
    columns = [stage_means(p) for p in paths]
    names = [p.rsplit("/", 1)[-1].replace(".metrics.txt", "") for p in paths]
    print("| stage | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(paths))
    for stage in STAGES:
        cells = [f"{c[stage]:.3f}" if stage in c else "-" for c in columns]
        print(f"| {stage} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
