#!/usr/bin/env python3
"""Writes summary.md for a chaos or soak run (chaos.sh, soak.sh).

Usage: chaos_summary.py OUT SUITE --machine M --commit C --command CMD
           --rss-boot KIB --rss-start KIB --rss-end KIB --admission "A Q"

Reads OUT/SUITE-normal.json and OUT/SUITE-flood.json (sluice-bench
reports), OUT/rss.csv and OUT/events.log.
"""

import argparse
import csv
import json
import os
import subprocess
import sys

INFRA_CANCEL_LIMIT = 0.005
RSS_GROWTH_LIMIT = 0.10


def verdict(ok):
    return "PASS" if ok else "FAIL"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("suite")
    parser.add_argument("--machine", required=True)
    parser.add_argument("--commit", required=True)
    parser.add_argument("--command", required=True)
    parser.add_argument("--rss-boot", type=int, required=True)
    parser.add_argument("--rss-start", type=int, required=True)
    parser.add_argument("--rss-end", type=int, required=True)
    parser.add_argument("--admission", required=True)
    args = parser.parse_args()

    normal_path = os.path.join(args.out, f"{args.suite}-normal.json")
    flood_path = os.path.join(args.out, f"{args.suite}-flood.json")
    with open(normal_path) as f:
        normal = json.load(f)
    summary = normal["summary"]
    clients = summary["clients"]
    well = clients["well_behaved"]
    rest = normal.get("server_at_rest") or {}
    with open(os.path.join(args.out, "rss.csv")) as f:
        rss = [int(row["rss_kib"]) for row in csv.DictReader(f) if row["rss_kib"]]
    rss_max = max(rss + [args.rss_end])
    growth = (args.rss_end - args.rss_start) / args.rss_start
    admission_at_rest = args.admission == "0 0"
    server_at_rest = bool(rest.get("at_rest")) and admission_at_rest

    print(f"# {args.suite.capitalize()} run: slow readers, disconnects, a flood tenant, engine stalls")
    print()
    print(f"- machine: {args.machine}")
    print(f"- commit: {args.commit}")
    print(f"- command: `{args.command}`")
    print(f"- normal tenant: `{normal['command']}`")
    print(f"- clients: {json.dumps(normal['workload']['clients'])}")
    print()
    print("## Checks")
    print()
    print("| check | value | limit | |")
    print("|---|---|---|---|")
    print(
        f"| infrastructure-caused cancellations (normal clients' streams not ending cleanly) "
        f"| {well['unclean']} of {well['streams']} ({well['unclean_rate'] * 100:.2f} %) "
        f"| < {INFRA_CANCEL_LIMIT * 100:.1f} % | {verdict(well['unclean_rate'] < INFRA_CANCEL_LIMIT)} |"
    )
    gauges = ", ".join(f"{name.removeprefix('sluice:')} {value}" for name, value in rest.get("after", {}).items())
    print(
        f"| server at rest after the run | {gauges}; admission active/queued {args.admission} "
        f"(settled in {rest.get('settle_seconds', 0):.1f} s) | all 0 | {verdict(server_at_rest)} |"
    )
    print(
        f"| resident memory, end vs after warm-up | {args.rss_start / 1024:.0f} → {args.rss_end / 1024:.0f} MiB "
        f"({growth * 100:+.1f} %) | ±{RSS_GROWTH_LIMIT * 100:.0f} % | {verdict(abs(growth) <= RSS_GROWTH_LIMIT)} |"
    )
    print()
    print(
        f"Resident memory: {args.rss_boot / 1024:.0f} MiB at boot, {args.rss_start / 1024:.0f} MiB after the warm-up, "
        f"max {rss_max / 1024:.0f} MiB, {args.rss_end / 1024:.0f} MiB at the end (`rss.csv`)."
    )
    print()
    print("## Clients of the normal tenant")
    print()
    print("| behaviour | sent | clean | hung up as planned | unclean |")
    print("|---|---|---|---|---|")
    for name in ("normal", "slow_reader", "disconnect"):
        c = clients[name]
        print(f"| {name} | {c['sent']} | {c['clean']} | {c['disconnected']} | {c['unclean']} |")
    print()
    causes = ("rejected", "no_response", "http_errors", "truncated", "stream_errors")
    print("Normal clients' unclean ends by cause: " + ", ".join(f"{cause} {well[cause]}" for cause in causes) + ".")
    for line in well["first_unclean"]:
        print(f"- `{line}`")
    print()
    print("## Latency and throughput")
    print()
    sys.stdout.flush()
    reports = [normal_path] + ([flood_path] if os.path.exists(flood_path) else [])
    subprocess.run([os.path.join(os.path.dirname(__file__), "..", "summarize.py"), *reports], check=True)
    print()
    print("## Events")
    print()
    print("```")
    with open(os.path.join(args.out, "events.log")) as f:
        print(f.read().rstrip())
    print("```")
    print()
    print("Server counters at rest (`metrics-at-rest.txt`):")
    print()
    print("```")
    with open(os.path.join(args.out, "metrics-at-rest.txt")) as f:
        print(f.read().rstrip())
    print("```")


if __name__ == "__main__":
    main()
