#!/usr/bin/env python3
"""Timeline of a rollback run: TTFT per 10 s bucket (by request start), the
prefix_cache flag's kill switch as the admin API showed it, and every policy
action, all in seconds from the start of the load.

usage: timeline.py RUN.json ADMIN_STATE.jsonl
"""
import json
import sys


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main():
    run = json.load(open(sys.argv[1]))
    rows = [json.loads(line) for line in open(sys.argv[2]) if line.strip()]
    buckets = {}
    for record in run["requests"]:
        if record.get("ttft_seconds") is not None:
            buckets.setdefault(int(record["start_seconds"] // 10), []).append(record["ttft_seconds"])
    events = []
    killed = None
    seen_actions = set()
    for row in rows:
        if "event" in row:
            events.append((row["t"], row["event"]))
            continue
        state = row.get("state")
        if not state:
            continue
        flag = state["flags"]["prefix_cache"]["kill_switch"]
        if flag != killed:
            events.append((row["t"], f"admin state: prefix_cache kill_switch = {str(flag).lower()}"))
            killed = flag
        for action in state["policy"]["recent_actions"]:
            key = (action["at_seconds"], action["rule"])
            if key not in seen_actions:
                seen_actions.add(key)
                events.append((row["t"], f"policy action seen: {action['rule']} -> {action['action']} "
                                         f"({action['evidence']})"))
    print("## Timeline (seconds from the start of the load)")
    print()
    for t, event in sorted(events):
        print(f"- {t:6.1f} s: {event}")
    print()
    print("| requests started in | n | TTFT p50 (s) | TTFT p95 (s) |")
    print("|---|---|---|---|")
    for bucket in sorted(buckets):
        values = buckets[bucket]
        print(f"| {bucket * 10}-{bucket * 10 + 10} s | {len(values)} | {percentile(values, 0.5):.2f} | "
              f"{percentile(values, 0.95):.2f} |")


if __name__ == "__main__":
    main()
