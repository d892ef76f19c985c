#!/usr/bin/env python3
"""Writes summary.md for a chaos or soak run (chaos.sh, soak.sh).

Usage: chaos_summary.py OUT SUITE --machine M --commit C --command CMD
           --rss-boot KIB --rss-start KIB --rss-end KIB --admission "A Q"
           [--fds-boot N --fds-start N --fds-end N --fds-settle S --fd-slack N]
           [--registry registry-at-rest.json] [--slow-delay-ms MS]
           [--infra-cancel-max-rate R] [--hostile hostile.json --hostile-rc RC]

Reads OUT/SUITE-normal.json and OUT/SUITE-flood.json (sluice-bench
reports), OUT/rss.csv, OUT/events.log and OUT/metrics-at-rest.txt, and
the files named by --registry and --hostile.
"""

import argparse
import csv
import json
import os
import statistics
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
    parser.add_argument("--binaries", default="built by the script")
    parser.add_argument("--infra-cancel-max-rate", type=float, default=INFRA_CANCEL_LIMIT)
    parser.add_argument("--fds-boot", type=int)
    parser.add_argument("--fds-start", type=int)
    parser.add_argument("--fds-end", type=int)
    parser.add_argument("--fds-settle", type=float, default=0.0)
    parser.add_argument("--fd-slack", type=int, default=0)
    parser.add_argument("--registry", help="/admin/streams at rest (JSON)")
    parser.add_argument("--slow-delay-ms", type=float, help="the slow readers' pause after each read")
    parser.add_argument(
        "--trickle-required", action="store_true", help="fail unless slow readers read slower than tokens arrive"
    )
    parser.add_argument("--hostile", help="hostile.py's JSON summary")
    parser.add_argument("--hostile-rc", type=int)
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
        rows = list(csv.DictReader(f))
    rss = [int(row["rss_kib"]) for row in rows if row.get("rss_kib")]
    fds = [int(row["fds"]) for row in rows if row.get("fds")]
    rss_max = max(rss + [args.rss_end])
    growth = (args.rss_end - args.rss_start) / args.rss_start
    admission_at_rest = args.admission == "0 0"
    registry = None
    if args.registry and os.path.exists(args.registry):
        with open(args.registry) as f:
            registry = json.load(f)
    registry_at_rest = registry is None or registry.get("active") == 0
    server_at_rest = bool(rest.get("at_rest")) and admission_at_rest and registry_at_rest
    hostile = None
    if args.hostile and os.path.exists(args.hostile):
        with open(args.hostile) as f:
            hostile = json.load(f)

    extras = ", a flood tenant" if os.path.exists(flood_path) else ""
    extras += ", engine stalls" if "stall " in open(os.path.join(args.out, "events.log")).read() else ""
    extras += ", idle and slowloris sockets, bad requests" if args.hostile else ""
    print(f"# {args.suite.capitalize()} run: slow readers, disconnects{extras}")
    print()
    print(f"- machine: {args.machine}")
    print(f"- commit: {args.commit}")
    print(f"- binaries: {args.binaries}")
    print(f"- command: `{args.command}`")
    print(f"- normal tenant: `{normal['command']}`")
    print(f"- clients: {json.dumps(normal['workload']['clients'])}")
    print()
    print("## Checks")
    print()
    print("| check | value | limit | |")
    print("|---|---|---|---|")
    limit = args.infra_cancel_max_rate
    if limit > 0:
        infra_ok, infra_limit = well["unclean_rate"] < limit, f"< {limit * 100:.1f} %"
    else:
        infra_ok, infra_limit = well["unclean"] == 0, "0"
    print(
        f"| infrastructure-caused cancellations (normal clients' streams not ending cleanly) "
        f"| {well['unclean']} of {well['streams']} ({well['unclean_rate'] * 100:.2f} %) "
        f"| {infra_limit} | {verdict(infra_ok)} |"
    )
    gauges = ", ".join(f"{name.removeprefix('sluice:')} {value}" for name, value in rest.get("after", {}).items())
    live = f"registry live streams {registry.get('active')}; " if registry is not None else ""
    print(
        f"| leaked sequences or permits: server at rest after the run | {live}{gauges}; "
        f"admission active/queued {args.admission} "
        f"(gauges settled in {rest.get('settle_seconds', 0):.1f} s) | all 0 | {verdict(server_at_rest)} |"
    )
    print(
        f"| resident memory, end vs after warm-up | {args.rss_start / 1024:.0f} → {args.rss_end / 1024:.0f} MiB "
        f"({growth * 100:+.1f} %) | ±{RSS_GROWTH_LIMIT * 100:.0f} % | {verdict(abs(growth) <= RSS_GROWTH_LIMIT)} |"
    )
    if args.fds_start is not None and args.fds_end is not None:
        fds_ok = args.fds_end <= args.fds_start + args.fd_slack
        print(
            f"| open fds at rest vs after warm-up | {args.fds_start} → {args.fds_end} "
            f"(settled in {args.fds_settle:.1f} s) | ≤ {args.fds_start + args.fd_slack} "
            f"(+{args.fd_slack}) | {verdict(fds_ok)} |"
        )
    if args.slow_delay_ms:
        trickle = trickling(normal, args.slow_delay_ms, args.trickle_required)
        if trickle:
            print(trickle)
    if args.hostile:
        print(hostile_check(hostile, args.hostile_rc))
    print()
    print(
        f"Resident memory: {args.rss_boot / 1024:.0f} MiB at boot, {args.rss_start / 1024:.0f} MiB after the warm-up, "
        f"max {rss_max / 1024:.0f} MiB, {args.rss_end / 1024:.0f} MiB at the end (`rss.csv`)."
    )
    if fds and args.fds_start is not None:
        print(
            f"Open fds: {args.fds_boot} at boot, {args.fds_start} after the warm-up (the baseline), "
            f"max {max(fds)} during the run, {args.fds_end} at rest (`rss.csv`, column `fds`)."
        )
    if registry is not None:
        ended = ", ".join(f"{k} {v}" for k, v in registry.get("ended", {}).items())
        print(f"Registry at rest (`registry-at-rest.json`): {registry.get('active')} live; ended: {ended}.")
    if hostile is not None:
        print()
        print_hostile(hostile)
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


def trickling(normal, delay_ms, required):
    """The check row saying whether slow readers read slower than tokens
    arrive: their pause after each read (one chunk, one token) against the
    normal clients' mean gap between tokens."""
    requests = normal.get("requests") or []
    gaps = {"normal": [], "slow_reader": []}
    for request in requests:
        kind = request.get("behaviour", {}).get("kind")
        if kind in gaps and not request.get("warmup"):
            gaps[kind].extend(request.get("itl_seconds") or [])
    if not gaps["normal"]:
        return None
    mean_ms = statistics.mean(gaps["normal"]) * 1000
    p50_ms = statistics.median(gaps["normal"]) * 1000
    slow = f"; slow readers' own gap p50 {statistics.median(gaps['slow_reader']) * 1000:.0f} ms" if gaps["slow_reader"] else ""
    return (
        f"| slow readers trickle (read slower than tokens arrive) | pause {delay_ms:.0f} ms per read vs "
        f"normal streams' token gap mean {mean_ms:.0f} ms (p50 {p50_ms:.0f} ms){slow} "
        f"| pause > gap mean | {verdict(delay_ms > mean_ms) if required else '(not required)'} |"
    )


def hostile_check(hostile, rc):
    if hostile is None:
        return f"| hostile clients (`hostile.py`) | no summary (exit {rc}); see `hostile.log` | | FAIL |"
    bad = hostile["bad_requests"]
    return (
        f"| bad requests answered 5xx or left hanging (`hostile.py`) | {bad['5xx']} 5xx, {bad['hangs']} hangs "
        f"of {bad['sent']} (exit {rc}) | 0 | {verdict(hostile['ok'] and bad['5xx'] == 0 and bad['hangs'] == 0)} |"
    )


def print_hostile(hostile):
    args = hostile["args"]
    bad = hostile["bad_requests"]
    print("## Hostile clients")
    print()
    print(
        f"`benchmarks/qos/hostile.py` for {hostile['seconds']:.0f} s (`hostile.json`): {args['idle']} idle sockets, "
        f"{args['slowloris']} slowloris sockets (a header byte every {args['slowloris_interval']:g} s), "
        f"{args['bad_rate']:g} bad requests/s."
    )
    print()
    print("| sockets | opened | closed by the server | lifetime p50 / max s | held to the end | what the server did |")
    print("|---|---|---|---|---|---|")
    for name in ("idle", "slowloris"):
        pool = hostile[name]
        life = pool["lifetime_closed_seconds"]
        lifetime = f"{life['p50']} / {life['max']}" if life["count"] else "-"
        said = ", ".join(f"`{k}` {v}" for k, v in pool["server_said_before_closing"].items())
        how = pool["behaviour"] + (f" (said first: {said})" if said else "")
        print(
            f"| {name} ({pool['sockets']}) | {pool['opened']} ({pool['reconnects']} reconnects, "
            f"{pool['connect_errors']} connect errors) | {pool['closed_by_server']} | {lifetime} "
            f"| {pool['held_to_end']} | {how} |"
        )
    print()
    print("| bad request | sent | answers | refused (4xx, or closed for garbage/oversized) | unexpected | 5xx | hangs |")
    print("|---|---|---|---|---|---|---|")
    for kind, stats in bad["by_kind"].items():
        answers = ", ".join(f"{code} {n}" for code, n in sorted(stats["status"].items()))
        print(
            f"| {kind} | {stats['sent']} | {answers} | {stats['refused']} | {stats['unexpected']} "
            f"| {stats['5xx']} | {stats['hangs']} |"
        )
    latency = bad["latency_seconds"]
    print()
    print(
        f"Bad requests: {bad['sent']} sent, answered in p50 {latency['p50']} s, max {latency['max']} s; "
        f"{bad['skipped_at_inflight_cap']} skipped at the in-flight cap."
    )
    # The first of each kind and outcome; hostile.json keeps up to 20.
    seen = set()
    for item in bad["failures"] + bad["first_unexpected_by_kind"]:
        if (item["kind"], item["outcome"]) in seen:
            continue
        seen.add((item["kind"], item["outcome"]))
        count = bad["by_kind"].get(item["kind"], {}).get("status", {}).get(item["outcome"], 1)
        print(
            f"- {item['kind']} → {item['outcome']} ({count}×; the first in {item['seconds']} s): "
            f"request `{item['request'][:300]}`; response `{item['response'][:300]}`"
        )


if __name__ == "__main__":
    main()
