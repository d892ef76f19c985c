#!/usr/bin/env python3
"""Overload runs as a user sees them: every request sent in the measured
window, its retry (when the client followed Retry-After) counted as the same
request. Goodput: requests whose last attempt met the SLO (TTFT and mean
inter-token gap), per second of the window their first attempts were sent
in, and per second from the first send to the last end (the span run.sh's
capacity is measured over; retries served after the arrivals stop count in
the first, not in the time of the second). Output tok/s: the admitted requests' tokens over the time from the
first send to the last end; steady: the tokens that arrived from the end of
the warm-up to the last send (first attempt or retry), while every client was
still sending, over that span (warm-up requests' tokens in it included).

Usage: summarize.py CAPACITY_RPS REPORT.json[.gz] ...
"""
import gzip
import json
import sys


def load(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        return json.load(f)


def quantile(values, q):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def met(record, slo):
    if record["status"] != 200 or not record["done"] or record.get("error"):
        return False
    ttft = record.get("ttft_seconds")
    gaps = record.get("itl_seconds") or []
    mean_gap = sum(gaps) / len(gaps) if gaps else 0.0
    return ttft is not None and ttft <= slo["ttft"] and mean_gap <= slo["itl"]


def tokens_arrived_between(record, start, end):
    """Tokens whose chunk arrived in [start, end], as the bench report counts them."""
    ttft = record.get("ttft_seconds")
    if ttft is None:
        return 0.0
    tokens = record.get("usage_completion_tokens") or record.get("content_chunks") or 0
    per_chunk = tokens / max(record.get("content_chunks") or 1, 1)
    at = record["start_seconds"] + ttft
    count = int(start <= at <= end)
    for gap in record.get("itl_seconds") or []:
        at += gap
        count += int(start <= at <= end)
    return count * per_chunk


def fmt(value, unit="s", digits=2):
    return "–" if value is None else f"{value:.{digits}f} {unit}".strip()


def row(report, capacity):
    slo = {"ttft": 10.0, "itl": 2.0}
    records = [r for r in report["requests"] if not r["warmup"]]
    starts = [r["start_seconds"] for r in records]
    window = (max(starts) - min(starts)) if len(starts) > 1 else 1.0
    finals = [r.get("retry") or r for r in records]
    shed = [r for r in records if r["status"] == 429]
    retries = [r["retry"] for r in records if r.get("retry")]
    booked = [
        r["retry"]
        for r in records
        if r.get("retry") and "place is held" in (r.get("error") or "")
    ]
    admitted = [f for f in finals if f["status"] == 200]
    good = [f for f in finals if met(f, slo)]
    ttfts = [f["ttft_seconds"] for f in admitted if f.get("ttft_seconds") is not None]
    gaps = [g for f in admitted for g in f.get("itl_seconds") or []]
    tokens = sum(
        (f.get("usage_completion_tokens") or f.get("content_chunks") or 0) for f in admitted
    )
    first_ttfts = [
        r["ttft_seconds"] for r in records if r["status"] == 200 and r.get("ttft_seconds") is not None
    ]
    booked_ttfts = [r["ttft_seconds"] for r in booked if r["status"] == 200 and r.get("ttft_seconds") is not None]
    ends = [f["start_seconds"] + f["e2e_seconds"] for f in admitted]
    steady_start = report["plan"].get("warmup_seconds") or 0.0
    every = report["requests"]
    every_attempt = every + [r["retry"] for r in every if r.get("retry")]
    steady_end = max(r["start_seconds"] for r in every_attempt)
    steady_tokens = sum(
        tokens_arrived_between(r, steady_start, steady_end) for r in every_attempt if r["status"] == 200
    )
    span = (max(ends) - min(starts)) if ends and starts else 0.0
    plan = report["plan"]["shape"]
    rate = plan.get("rate")
    return {
        "name": report["name"],
        "offered_rps": rate,
        "load": rate / capacity if rate and capacity else None,
        "requests": len(records),
        "shed_first_try": len(shed),
        "shed_answer_p99_s": quantile([r["e2e_seconds"] for r in shed], 0.99),
        "retries": len(retries),
        "retries_admitted": sum(1 for r in retries if r["status"] == 200),
        "booked_retries": len(booked),
        "booked_retries_admitted": sum(1 for r in booked if r["status"] == 200),
        "admitted": len(admitted),
        "ttft_p50_s": quantile(ttfts, 0.5),
        "ttft_p95_s": quantile(ttfts, 0.95),
        "itl_p99_s": quantile(gaps, 0.99),
        "first_attempts_admitted": len(first_ttfts),
        "first_attempt_ttft_p50_s": quantile(first_ttfts, 0.5),
        "first_attempt_ttft_p95_s": quantile(first_ttfts, 0.95),
        "booked_retry_ttft_p50_s": quantile(booked_ttfts, 0.5),
        "booked_retry_ttft_p95_s": quantile(booked_ttfts, 0.95),
        "goodput_rps": len(good) / window,
        "goodput_of_capacity": len(good) / window / capacity if capacity else None,
        "span_goodput_rps": len(good) / span if span > 0 else 0.0,
        "output_tok_s": tokens / span if span > 0 else 0.0,
        "steady_output_tok_s": steady_tokens / (steady_end - steady_start)
        if steady_end > steady_start
        else 0.0,
    }


def main():
    capacity = float(sys.argv[1])
    rows = [row(load(path), capacity) for path in sys.argv[2:]]
    print(f"capacity: {capacity:.3f} req/s; SLO TTFT 10 s, mean inter-token gap 2 s\n")
    print(
        "| run | load | requests | shed (answer p99) | retries admitted (booked) | admitted "
        "| TTFT p50 / p95 of admitted | ITL p99 | goodput | of capacity | goodput over the span (of capacity) | output tok/s (whole / steady) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {fmt(r['load'], '×', 2)} | {r['requests']} "
            f"| {r['shed_first_try']} ({fmt(r['shed_answer_p99_s'], 's', 3)}) "
            f"| {r['retries_admitted']}/{r['retries']} ({r['booked_retries_admitted']}/{r['booked_retries']}) "
            f"| {r['admitted']} "
            f"| {fmt(r['ttft_p50_s'])} / {fmt(r['ttft_p95_s'])} | {fmt(r['itl_p99_s'])} "
            f"| {fmt(r['goodput_rps'], 'req/s', 3)} | {fmt(r['goodput_of_capacity'] and 100 * r['goodput_of_capacity'], '%', 0)} "
            f"| {fmt(r['span_goodput_rps'], 'req/s', 3)} ({100 * r['span_goodput_rps'] / capacity:.0f} %) "
            f"| {r['output_tok_s']:.1f} / {r['steady_output_tok_s']:.1f} |"
        )
    print("\nTTFT by attempt (admitted only; a booked retry's TTFT counts from its resend):\n")
    print("| run | first attempts admitted | first attempts TTFT p50 / p95 | booked retries TTFT p50 / p95 |")
    print("|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {r['first_attempts_admitted']} "
            f"| {fmt(r['first_attempt_ttft_p50_s'])} / {fmt(r['first_attempt_ttft_p95_s'])} "
            f"| {fmt(r['booked_retry_ttft_p50_s'])} / {fmt(r['booked_retry_ttft_p95_s'])} |"
        )
    json.dump(rows, open("/dev/stderr", "w"), indent=1)


if __name__ == "__main__":
    main()
