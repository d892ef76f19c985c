#!/usr/bin/env python3
"""Prefix-aware routing vs round-robin (issue #15): three Sluice processes
on this machine behind Envoy, routed by the llm-d endpoint picker (EPP, as
deploy/ ships it; Envoy's least-request where the EPP is not built) or by
Envoy alone round-robin, under the same closed loop
of 3 x 32 streams. Every request asks about one of DOCUMENTS documents, so
a process that has seen a document holds its KV; routing that sends each
document to the same process prefills it once.

    benchmarks/cluster/run.py            # ~7 minutes; needs make test-cluster's parts
    DURATION=120 STREAMS=96 benchmarks/cluster/run.py

Writes benchmarks/results/<date>-<commit>-cluster/: per mode the bench
report (gzipped) and the processes' prefix-cache counters, summary.md.
"""

import datetime
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests/cluster"))

from stack import GATEWAY, POD_PORTS, Cluster, counter_total, default_routing, preflight  # noqa: E402

DOCUMENTS = 12
DOCUMENT_WORDS = 400
DURATION = int(os.environ.get("DURATION", "150"))
WARMUP = int(os.environ.get("WARMUP", "30"))
STREAMS = int(os.environ.get("STREAMS", "96"))
MAX_TOKENS = 32
WORDS = (
    "river canal lock gate water level boat barge keeper valve stone bridge "
    "current tide flow weir dam basin harbour quay rope engine pump mill field"
).split()


def prompt_file(path):
    rng = random.Random(7)
    documents = [
        f"Document {d}. " + " ".join(rng.choice(WORDS) for _ in range(DOCUMENT_WORDS))
        for d in range(DOCUMENTS)
    ]
    with open(path, "w") as out:
        for i in range(4000):
            document = documents[rng.randrange(DOCUMENTS)]
            question = f"Question {i}: which word comes up most in this document?"
            out.write(json.dumps({"system": document, "user": question}) + "\n")


def prefix_counters():
    return {
        port: (
            counter_total(port, "sluice:prefix_cache_query_tokens_total"),
            counter_total(port, "sluice:prefix_cache_hit_tokens_total"),
            counter_total(port, "sluice:request_finished_total"),
        )
        for port in POD_PORTS
    }


def run_mode(routing, prompts, out):
    cluster = Cluster(routing=routing)
    try:
        cluster.start()
        before = prefix_counters()
        name = f"cluster-{routing}"
        subprocess.run(
            [
                ROOT / "target/release/sluice-bench", "run",
                "--url", f"http://127.0.0.1:{GATEWAY}",
                "--api", "completions",
                "--prompt-file", prompts,
                "--max-tokens", str(MAX_TOKENS), "--ignore-eos", "--temperature", "0.7",
                "--concurrency", str(STREAMS),
                "--duration", str(DURATION), "--warmup", str(WARMUP),
                "--name", name, "--out", out,
            ],
            check=True,
        )
        after = prefix_counters()
    except BaseException:
        cluster.dump_logs()
        raise
    finally:
        cluster.stop()
    report = json.loads((out / f"{name}.json").read_text())
    query = sum(after[p][0] - before[p][0] for p in POD_PORTS)
    hit = sum(after[p][1] - before[p][1] for p in POD_PORTS)
    per_pod = {p: after[p][2] - before[p][2] for p in POD_PORTS}
    summary = report["summary"]
    return {
        "routing": routing,
        "ttft_p50": summary["ttft_seconds"]["p50"],
        "ttft_p95": summary["ttft_seconds"]["p95"],
        "itl_p99": summary["itl_seconds"]["p99"],
        "output_tokens_per_second": summary["output_tokens_per_second"],
        "steady_output_tokens_per_second": summary["steady_output_tokens_per_second"],
        "succeeded": summary["counts"]["succeeded"],
        "cached_prompt_tokens_fraction": hit / query if query else 0.0,
        "requests_per_pod": per_pod,
    }


def main():
    preflight()
    bench = ROOT / "target/release/sluice-bench"
    if not bench.exists():
        sys.exit(f"{bench} missing: cargo build --release -p sluice-bench")
    commit = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    out = ROOT / "benchmarks/results" / f"{datetime.date.today()}-{commit}-cluster"
    out.mkdir(parents=True, exist_ok=True)
    prompts = out / "prompts.jsonl"
    prompt_file(prompts)
    # Without the EPP (not built: scripts/setup-cluster.sh says why) the
    # comparison is Envoy's least-request against round-robin.
    rows = [run_mode(routing, prompts, out) for routing in [default_routing(), "round-robin"]]
    prompts.unlink()
    for path in out.glob("*.json"):
        if path.name != "summary.json":
            with open(path, "rb") as src, gzip.open(f"{path}.gz", "wb") as dst:
                shutil.copyfileobj(src, dst)
            path.unlink()
    (out / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        f"# {rows[0]['routing']} vs round-robin: 3 Sluice processes, one machine",
        "",
        f"- machine: {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores, "
        f"{os.uname().machine}; three processes of deploy/local/sluice.yaml (one engine thread each)",
        f"- commit: {commit}",
        f"- command: DURATION={DURATION} STREAMS={STREAMS} benchmarks/cluster/run.py",
        f"- workload: closed loop, {STREAMS} streams, completions; each prompt one of {DOCUMENTS} "
        f"documents of {DOCUMENT_WORDS} words plus a question; max_tokens {MAX_TOKENS} (ignore_eos); "
        f"{WARMUP} s warm-up left out",
        "",
        "| routing | TTFT p50 | TTFT p95 | ITL p99 | output tok/s (steady) | cached prompt tokens | requests per process |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['routing']} | {row['ttft_p50']:.2f} s | {row['ttft_p95']:.2f} s | {row['itl_p99']:.2f} s "
            f"| {row['output_tokens_per_second']:.1f} ({row['steady_output_tokens_per_second']:.1f}) "
            f"| {100 * row['cached_prompt_tokens_fraction']:.0f} % "
            f"| {' / '.join(f'{n:.0f}' for n in row['requests_per_pod'].values())} |"
        )
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
