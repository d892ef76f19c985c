#!/usr/bin/env python3
"""Prints a markdown table of sluice-bench JSON reports.

Usage: summarize.py REPORT.json [REPORT.json ...]
"""

import json
import sys


def ms(seconds):
    return f"{seconds * 1000:.0f}"


def main(paths):
    print("| run | ok/sent | rejected | output tok/s (whole / steady) | TTFT p50 / p95 / p99 ms | ITL p50 / p95 / p99 ms | E2E p50 ms | connect mean ms | wire B/token | server CPU ms/token |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        s = report["summary"]
        c = s["counts"]
        t, i, e = s["ttft_seconds"], s["itl_seconds"], s["e2e_seconds"]
        cpu = s.get("server_cpu")
        cpu_text = f"{cpu['per_output_token'] * 1000:.2f}" if cpu else "-"
        print(
            f"| {report['name']} | {c['succeeded']}/{c['sent']} | {s['rejection_rate'] * 100:.1f}% "
            f"| {s['output_tokens_per_second']:.1f} / {s.get('steady_output_tokens_per_second', 0):.1f} "
            f"| {ms(t['p50'])} / {ms(t['p95'])} / {ms(t['p99'])} "
            f"| {ms(i['p50'])} / {ms(i['p95'])} / {ms(i['p99'])} "
            f"| {ms(e['p50'])} | {s['connect_seconds']['mean'] * 1000:.2f} "
            f"| {s['wire_bytes_per_output_token']:.0f} | {cpu_text} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
