#!/usr/bin/env python3
"""Summary of a rag-mix run (benchmarks/long/rag-mix.sh): splits the
sluice-bench records of short-only and rag-mix by prompt kind (the line of
the prompt file each request sent: index % lines) and checks issue #14's
targets.

Usage: summarize.py OUT_DIR MACHINE COMMIT COMMAND
"""
import json
import statistics
import sys


def percentile(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def records(out, run):
    with open(f"{out}/{run}.json") as f:
        report = json.load(f)
    with open(f"{out}/{run}.prompts.kinds.json") as f:
        kinds = json.load(f)
    measured = [r for r in report["requests"] if not r["warmup"]]
    for r in measured:
        r["kind"] = kinds[r["index"] % len(kinds)]
    return report["summary"], measured


def row(name, rs):
    ok = [r for r in rs if r["status"] == 200 and r["ttft_seconds"] is not None]
    ttft = [r["ttft_seconds"] for r in ok]
    itl = [gap for r in ok for gap in r["itl_seconds"]]
    prompt = [r["usage_prompt_tokens"] for r in ok if r["usage_prompt_tokens"]]
    return (f"| {name} | {len(ok)}/{len(rs)} | {statistics.median(prompt) if prompt else 0:.0f} "
            f"| {percentile(ttft, 0.5):.2f} / {percentile(ttft, 0.95):.2f} "
            f"| {percentile(itl, 0.5):.3f} / {percentile(itl, 0.99):.3f} |"), ok


def main(out, machine, commit, command):
    alone_summary, alone = records(out, "short-only")
    mix_summary, mix = records(out, "rag-mix")
    lines = [
        "# rag-mix: long RAG prompts beside short chats (issue #14)", "",
        f"- machine: {machine}", f"- commit: {commit}", f"- command: `{command}`",
        "- server: default config (short pool 128 x 1,024 cells, long pool 4 x 8,192)", "",
        "| run / requests | ok / measured | prompt tokens p50 | TTFT p50 / p95 s | ITL p50 / p99 s |",
        "|---|---|---|---|---|",
    ]
    text, alone_ok = row("short-only: all", alone)
    lines.append(text)
    groups = {}
    for kind in ("short", "long-repeated", "long-new"):
        text, ok = row(f"rag-mix: {kind}", [r for r in mix if r["kind"] == kind])
        lines.append(text)
        groups[kind] = ok
    text, mix_ok = row("rag-mix: all", mix)
    lines.append(text)
    lines.append("")
    lines.append(f"Output tok/s: short-only {alone_summary['output_tokens_per_second']:.1f}, "
                 f"rag-mix {mix_summary['output_tokens_per_second']:.1f}.")
    lines.append("")

    short_alone = percentile([r["ttft_seconds"] for r in alone_ok], 0.95)
    short_mix = percentile([r["ttft_seconds"] for r in groups["short"]], 0.95)
    ratio = short_mix / short_alone
    itl_p99 = percentile([g for r in mix_ok for g in r["itl_seconds"]], 0.99)
    new = groups["long-new"]
    rates = [r["usage_prompt_tokens"] / r["ttft_seconds"] for r in new if r["ttft_seconds"]]
    long_ttft = percentile([r["ttft_seconds"] for r in groups["long-repeated"] + new], 0.5)
    verdict = lambda ok: "PASS" if ok else "FAIL"
    lines += [
        f"- short TTFT p95: {short_mix:.2f} s in rag-mix against {short_alone:.2f} s alone, "
        f"ratio {ratio:.2f} (target <= 1.5): {verdict(ratio <= 1.5)}",
        f"- ITL p99 of all streams in rag-mix: {itl_p99:.3f} s (target <= 1.0 s): {verdict(itl_p99 <= 1.0)}",
        f"- long requests' TTFT p50: {long_ttft:.1f} s (repeated document "
        f"{percentile([r['ttft_seconds'] for r in groups['long-repeated']], 0.5):.1f} s, new document "
        f"{percentile([r['ttft_seconds'] for r in new], 0.5):.1f} s); a new document's prompt tokens "
        f"over its TTFT (wait for a long sequence included): p50 "
        f"{percentile(rates, 0.5):.0f} tok/s",
    ]
    with open(f"{out}/summary.md", "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:5])
