#!/usr/bin/env python3
"""A closed loop's cold burst against its physical bound. N prompts sent
together, prefilled at R prompt tokens per second at best: the k-th first
token cannot come before the k shortest prompts are prefilled, so the last
one is at least sum(P)/R after the burst and the mean at least the mean of
those prefix sums (each prompt's first token out as soon as its own
prefill ends: the order that lets first tokens out progressively). Decodes
of the streams already answered take steps too, so no scheduler reaches
the bound; how far each run is from it is the measure.

Usage: cold_burst.py PREFILL_TOKENS_PER_SECOND REPORT.json[.gz] ...
"""
import sys

from summarize import load

BURST_SECONDS = 1.0


def burst(report, rate):
    records = [
        r for r in report["requests"] if r["start_seconds"] < BURST_SECONDS and r["status"] == 200
    ]
    tokens = sorted(r["usage_prompt_tokens"] or 0 for r in records)
    bounds, done = [], 0
    for prompt in tokens:
        done += prompt
        bounds.append(done / rate)
    ttfts = sorted(r["ttft_seconds"] for r in records if r.get("ttft_seconds") is not None)
    if not ttfts:
        return None
    return {
        "name": report["name"],
        "prompts": len(ttfts),
        "ttft_mean_s": sum(ttfts) / len(ttfts),
        "bound_mean_s": sum(bounds) / len(bounds),
        "ttft_last_s": ttfts[-1],
        "bound_last_s": bounds[-1],
    }


def main():
    rate = float(sys.argv[1])
    print(f"Cold burst against its bound at {rate:.0f} prompt tokens/s:")
    print()
    print("| run | prompts | first token mean / bound | last / bound |")
    print("|---|---|---|---|")
    for path in sys.argv[2:]:
        row = burst(load(path), rate)
        if row is None:
            continue
        print(
            f"| {row['name']} | {row['prompts']} "
            f"| {row['ttft_mean_s']:.1f} s / {row['bound_mean_s']:.1f} s "
            f"| {row['ttft_last_s']:.1f} s / {row['bound_last_s']:.1f} s |"
        )


if __name__ == "__main__":
    main()
