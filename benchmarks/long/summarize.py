#!/usr/bin/env python3
"""Summary of a rag-mix run (benchmarks/long/rag-mix.sh): short-only against
rag-mix's short and long client groups, long requests split by prompt kind
(the line of the prompt file each request sent: index % lines), and issue
#14's targets.

Usage: summarize.py OUT_DIR MACHINE COMMIT COMMAND
"""
import json
import sys


def percentile(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def records(out, run, prompts, count_warmup=False):
    with open(f"{out}/{run}.json") as f:
        report = json.load(f)
    with open(f"{out}/{prompts}.prompts.kinds.json") as f:
        kinds = json.load(f)
    measured = [r for r in report["requests"] if count_warmup or not r["warmup"]]
    for r in measured:
        r["kind"] = kinds[r["index"] % len(kinds)]
    ok = [r for r in measured if r["status"] == 200 and r["ttft_seconds"] is not None]
    return report["summary"], measured, ok


def row(name, measured, ok):
    ttft = [r["ttft_seconds"] for r in ok]
    itl = [gap for r in ok for gap in r["itl_seconds"]]
    prompt = sorted(r["usage_prompt_tokens"] for r in ok if r["usage_prompt_tokens"])
    return (f"| {name} | {len(ok)}/{len(measured)} | {percentile(prompt, 0.5):.0f} "
            f"| {percentile(ttft, 0.5):.2f} / {percentile(ttft, 0.95):.2f} "
            f"| {percentile(itl, 0.5):.3f} / {percentile(itl, 0.99):.3f} |")


def main(out, machine, commit, command):
    alone_summary, alone, alone_ok = records(out, "short-only", "short")
    short_summary, short, short_ok = records(out, "rag-mix-short", "short")
    # Every long request counts: the long clients send their first documents
    # at 0 s, and on a 2-core host those are the only ones that finish
    # within a run (2026-12-07-*-rag-mix printed no long TTFT at all).
    long_summary, long, long_ok = records(out, "rag-mix-long", "long", count_warmup=True)
    repeated = [r for r in long_ok if r["kind"] == "long-repeated"]
    new = [r for r in long_ok if r["kind"] == "long-new"]
    lines = [
        "# rag-mix: long RAG prompts beside short chats (issue #14)", "",
        f"- machine: {machine}", f"- commit: {commit}", f"- command: `{command}`",
        "- server: default config (short pool 128 x 1,024 cells, long pool 4 x 8,192)", "",
        "| run / requests | ok / measured | prompt tokens p50 | TTFT p50 / p95 s | ITL p50 / p99 s |",
        "|---|---|---|---|---|",
        row("short-only", alone, alone_ok),
        row("rag-mix: short", short, short_ok),
        row("rag-mix: long, repeated document", [r for r in long if r["kind"] == "long-repeated"], repeated),
        row("rag-mix: long, new document", [r for r in long if r["kind"] == "long-new"], new),
        "",
        f"Output tok/s: short-only {alone_summary['output_tokens_per_second']:.1f}; rag-mix "
        f"{short_summary['output_tokens_per_second']:.1f} short + "
        f"{long_summary['output_tokens_per_second']:.1f} long. Long requests were "
        f"{len(long_ok)} of {len(long_ok) + len(short_ok)} measured in rag-mix.",
        "",
    ]
    short_alone = percentile([r["ttft_seconds"] for r in alone_ok], 0.95)
    short_mix = percentile([r["ttft_seconds"] for r in short_ok], 0.95)
    ratio = short_mix / short_alone
    itl_p99 = percentile([g for r in short_ok + long_ok for g in r["itl_seconds"]], 0.99)
    rates = [r["usage_prompt_tokens"] / r["ttft_seconds"] for r in new]
    verdict = lambda ok: "PASS" if ok else "FAIL"
    lines += [
        f"- short TTFT p95: {short_mix:.2f} s in rag-mix against {short_alone:.2f} s alone, "
        f"ratio {ratio:.2f} (target <= 1.5): {verdict(ratio <= 1.5)}",
        f"- ITL p99 of all streams in rag-mix: {itl_p99:.3f} s (target <= 1.0 s): {verdict(itl_p99 <= 1.0)}",
        f"- long requests' TTFT p50: {percentile([r['ttft_seconds'] for r in long_ok], 0.5):.1f} s "
        f"(repeated document {percentile([r['ttft_seconds'] for r in repeated], 0.5):.1f} s, "
        f"new document {percentile([r['ttft_seconds'] for r in new], 0.5):.1f} s); a new document's "
        f"prompt tokens over its TTFT: p50 {percentile(rates, 0.5):.0f} tok/s",
    ]
    with open(f"{out}/summary.md", "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:5])
