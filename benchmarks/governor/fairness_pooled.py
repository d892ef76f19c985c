#!/usr/bin/env python3
"""Pools fairness.sh runs: the light tenant's TTFT alone and beside the flood.

Usage: fairness_pooled.py RESULT_DIR [RESULT_DIR ...]

One run has 12 light requests, so its p95 is nearly its maximum and moves
by tenths of a second between runs; pooling repeated runs steadies it.
"""

import json
import math
import sys


def percentile(values, q):
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def main(dirs):
    pooled = {}
    for name in ("fairness-light-alone", "fairness-light-beside-flood"):
        ttfts = []
        for folder in dirs:
            with open(f"{folder}/{name}.json") as f:
                ttfts += [r["ttft_seconds"] for r in json.load(f)["requests"] if r["ttft_seconds"] is not None]
        pooled[name] = ttfts
    alone, beside = pooled["fairness-light-alone"], pooled["fairness-light-beside-flood"]
    print(f"| light tenant, {len(dirs)} runs pooled | requests | TTFT p50 s | TTFT p95 s |")
    print("|---|---|---|---|")
    for label, ttfts in (("alone", alone), ("beside the flood", beside)):
        print(f"| {label} | {len(ttfts)} | {percentile(ttfts, 0.5):.3f} | {percentile(ttfts, 0.95):.3f} |")
    print(f"| ratio | | {percentile(beside, 0.5) / percentile(alone, 0.5):.2f}x | {percentile(beside, 0.95) / percentile(alone, 0.95):.2f}x |")


if __name__ == "__main__":
    main(sys.argv[1:])
