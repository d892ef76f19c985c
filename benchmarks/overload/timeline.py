#!/usr/bin/env python3
"""An overload run's report per 30 s of its time: first attempts sent and
admitted, retries sent (booked / unbooked), bookings falling due, requests
completed (and meeting the SLO), output tokens per second and requests in
flight (mean over the bucket). Where a calendar runs slower than places
open, or a tail runs half empty, it shows here.

Usage: timeline.py REPORT.json[.gz] [BUCKET_SECONDS]
"""
import collections
import sys

from summarize import load, met, tokens_arrived_between


def main():
    report = load(sys.argv[1])
    bucket = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    slo = {"ttft": 10.0, "itl": 2.0}
    counts = collections.defaultdict(collections.Counter)
    attempts = []

    def at(seconds):
        return int(seconds // bucket) * bucket

    for r in report["requests"]:
        attempts.append(r)
        counts[at(r["start_seconds"])]["first"] += 1
        counts[at(r["start_seconds"])]["first_admitted"] += r["status"] == 200
        booked = "place is held" in (r.get("error") or "")
        if r["status"] == 429 and booked:
            counts[at(r["start_seconds"] + r["retry_after_seconds"])]["due"] += 1
        retry = r.get("retry")
        if retry:
            attempts.append(retry)
            counts[at(retry["start_seconds"])]["booked" if booked else "unbooked"] += 1
    served = [a for a in attempts if a["status"] == 200]
    for a in served:
        end = a["start_seconds"] + a["e2e_seconds"]
        counts[at(end)]["done"] += 1
        counts[at(end)]["good"] += met(a, slo)
    last = max(counts)
    print("from_s first admitted booked unbooked due done good out_tok_s in_flight")
    for start in range(0, last + bucket, bucket):
        c = counts[start]
        tokens = sum(tokens_arrived_between(a, start, start + bucket) for a in served)
        in_flight = sum(
            sum(1 for a in served if a["start_seconds"] <= s < a["start_seconds"] + a["e2e_seconds"])
            for s in range(start, start + bucket)
        ) / bucket
        print(
            f"{start:6d} {c['first']:5d} {c['first_admitted']:8d} {c['booked']:6d} {c['unbooked']:8d}"
            f" {c['due']:3d} {c['done']:4d} {c['good']:4d} {tokens / bucket:9.1f} {in_flight:9.1f}"
        )


if __name__ == "__main__":
    main()
