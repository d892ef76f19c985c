#!/usr/bin/env python3
"""The cluster test (issue #15): three Sluice processes behind Envoy and the
llm-d endpoint picker (EPP), with Redis, on loopback, run from the files
that ship in deploy/ (stack.py).

    make test-cluster        # scripts/setup-cluster.sh, build, then this

Every check is a bounded loop against the real processes: a deadline bounds
each wait, never a sleep standing in for one. Exit status 0 when every
check passes; the processes' logs are printed for the first failure.
"""

import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from stack import (
    DOCUMENT,
    POD_PORTS,
    Cluster,
    Failure,
    Stream,
    check,
    completion,
    default_routing,
    finished_total,
    gauge,
    preflight,
    status,
    wait_until,
)

# --- the checks ---------------------------------------------------------------


def shared_prefix_goes_to_one_pod(cluster):
    before = {p: finished_total(p) for p in POD_PORTS}
    served, cached = [], []
    for i in range(6):
        code, port, body = completion(f"{DOCUMENT}\nQuestion {i}: which lock opens first?", 2)
        check(code == 200, f"shared-prefix request {i}: status {code} {body}")
        served.append(port)
        cached.append(body["usage"].get("prompt_tokens_details", {}).get("cached_tokens", 0))
    after = {p: finished_total(p) for p in POD_PORTS}
    counts = {p: after[p] - before[p] for p in POD_PORTS}
    home = max(set(served), key=served.count)
    check(served.count(home) >= 5, f"shared-prefix requests spread over pods: {served}")
    check(counts[home] >= 5, f"pod {home}'s counter shows {counts[home]} of 6 (counters {counts})")
    check(all(c > 0 for c in cached[1:]), f"cached_tokens after the first request: {cached}")
    return f"6 shared-prefix requests served by {served}, cached_tokens {cached}"


def load_shifts_traffic(cluster):
    loaded = POD_PORTS[0]
    # Streams sent to one pod directly, around the gateway: its queue and
    # KV use rise while the others stay idle.
    streams = [Stream(f"{DOCUMENT}\nLoad {i}.", 256, port=loaded) for i in range(8)]
    try:
        for s in streams:
            check(s.status == 200, f"direct stream to {loaded}: status {s.status}")
        wait_until(f"pod {loaded} loaded", lambda: gauge(loaded, "sluice:num_requests_running") >= 4, 30)
        served = []
        for i in range(9):
            code, port, body = completion(f"Unrelated question number {i}: name a river.", 2)
            check(code == 200, f"request {i} while {loaded} is loaded: status {code} {body}")
            served.append(port)
    finally:
        for s in streams:
            s.close()
    check(served.count(loaded) <= 1, f"requests while {loaded} was loaded went to {served}")
    return f"with {loaded} loaded, 9 new requests went to {served}"


def sse_is_incremental(cluster):
    stream = Stream("Count slowly from one to a hundred:", 96)
    check(stream.status == 200, f"stream status {stream.status}")
    try:
        first = stream.next_event()
        check(first is not None and first != "[DONE]", f"first event: {first!r}")
        # The first event is here while the pod is still generating: Envoy
        # passed it on as it came, not at the end of the response.
        running = gauge(stream.endpoint, "sluice:num_requests_running")
        check(running >= 1, f"the pod finished before the first event arrived (running {running})")
        events, done = stream.drain()
    finally:
        stream.close()
    check(done and events >= 10, f"stream ended after {events} more events, [DONE] {done}")
    return f"first event while running={running:.0f} on {stream.endpoint}, then {events} events"


def disconnect_frees_the_sequence(cluster):
    stream = Stream("Write a long story about a canal:", 2000)
    check(stream.status == 200, f"stream status {stream.status}")
    stream.next_event()
    port = stream.endpoint
    check(gauge(port, "sluice:num_requests_running") >= 1, "stream not running on its pod")
    closed = time.monotonic()
    stream.close()
    wait_until(f"pod {port} to free the sequence", lambda: gauge(port, "sluice:num_requests_running") == 0, 2.0)
    return f"sequence on {port} freed {time.monotonic() - closed:.2f} s after the disconnect"


def removed_pod_gets_no_traffic(cluster):
    removed = POD_PORTS[2]
    cluster.set_endpoints(POD_PORTS[:2])
    before = finished_total(removed)

    def ten_elsewhere():
        ports = [completion(f"Removal probe {time.monotonic()}: a colour?", 1)[1] for _ in range(10)]
        return removed not in ports

    # The EPP re-reads the file when it changes; once it has, none of the
    # next requests reach the removed pod.
    wait_until("the EPP to drop the removed pod", ten_elsewhere, 30)
    mark = finished_total(removed)
    served = [completion(f"After removal {i}: a number?", 1)[1] for i in range(12)]
    check(removed not in served, f"removed pod {removed} still served: {served}")
    check(finished_total(removed) == mark, f"pod {removed}'s counter moved after removal")
    cluster.set_endpoints(POD_PORTS)
    wait_until(
        "the EPP to take the pod back",
        lambda: removed in [completion(f"Return probe {time.monotonic()}", 1)[1] for _ in range(12)],
        30,
    )
    return f"after removal 12 requests went to {served} (pod {removed} served {mark - before:.0f} during the switch)"


def killed_pod_costs_only_its_streams(cluster):
    streams = [Stream(f"Story {i} about boats on a river, in detail:", 200) for i in range(9)]
    for s in streams:
        check(s.status == 200, f"stream status {s.status}")
        check(s.next_event() is not None, "no first event")
    by_pod = {p: [s for s in streams if s.endpoint == p] for p in POD_PORTS}
    victim = max(POD_PORTS, key=lambda p: len(by_pod[p]))
    check(len(by_pod[victim]) >= 1, f"no stream on any pod? {by_pod}")
    cluster.kill(f"sluice-{victim}")
    # As Kubernetes drops a pod that fails its readiness probe from the
    # pool, the endpoints file drops the dead process.
    cluster.set_endpoints([p for p in POD_PORTS if p != victim])
    results = {id(s): s.drain() for s in streams}
    for s in streams:
        s.close()
    lost = [s for s in streams if not results[id(s)][1]]
    check(
        all(s.endpoint == victim for s in lost),
        f"streams lost on surviving pods: {[s.endpoint for s in lost if s.endpoint != victim]}",
    )
    check(len(lost) == len(by_pod[victim]), f"{len(lost)} lost, {len(by_pod[victim])} were on the killed pod")

    def all_elsewhere():
        results = [completion(f"After the kill {time.monotonic()}: a fruit?", 1) for _ in range(10)]
        return all(code == 200 and port != victim for code, port, _ in results)

    wait_until("new requests to avoid the killed pod", all_elsewhere, 30)
    return f"killed {victim}: its {len(lost)} streams ended, the other {len(streams) - len(lost)} completed; new requests served elsewhere"


METERED = {"x-llm-d-inference-fairness-id": "metered"}
METERED_RATE = 6000  # tokens per minute: deploy/local/sluice.yaml
# About 60 tokens: a minute's worth is about a hundred requests.
METERED_PROMPT = (
    "Metered request {}: the keeper of the lock reads the levels on both sides of the gate, "
    "opens the valves slowly, waits for the water to settle, and only then lets the boat through. "
    "Say one word about water."
)


def metered_request(i, headers=METERED):
    code, port, body = completion(METERED_PROMPT.format(i % 7), 1, headers=headers)
    check(code in (200, 429), f"metered request: status {code} {body}")
    return code, port, body


def shared_quota_holds_across_pods(cluster):
    """3x the tenant's token rate, spread by the gateway over the pods: the
    pods together admit the rate once (Redis), not three times."""
    # Empty the tenant's bucket (a minute's worth may burst): from then on
    # only the refill is admitted.
    with ThreadPoolExecutor(max_workers=6) as pool:
        wait_until(
            "the bucket to empty",
            lambda: 429 in [code for code, _, _ in pool.map(metered_request, range(12))],
            60,
        )
    # The same prompt as the default tenant, which has no rate: its cost.
    _, _, body = metered_request(0, headers={})
    cost = body["usage"]["prompt_tokens"] + 1
    interval = cost / (3 * METERED_RATE / 60)  # seconds between sends at 3x
    duration = 40.0
    start = time.monotonic()
    futures = []
    # Sent on schedule, whatever earlier answers take.
    with ThreadPoolExecutor(max_workers=16) as pool:
        while (due := start + len(futures) * interval) < start + duration:
            time.sleep(max(0.0, due - time.monotonic()))
            futures.append(pool.submit(metered_request, len(futures)))
        elapsed = time.monotonic() - start
        results = [f.result() for f in futures]
    sent = len(results)
    admitted = sum(1 for code, _, _ in results if code == 200)
    pods = {port for code, port, _ in results if code == 200}
    quota = METERED_RATE / 60 * elapsed
    ratio = admitted * cost / quota
    check(len(pods) >= 2, f"admitted requests were not spread over pods: {pods}")
    check(abs(ratio - 1) <= 0.05, f"admitted {admitted * cost} tokens against a quota of {quota:.0f} ({ratio:.3f})")
    report = f"offered {sent * cost} tokens in {elapsed:.1f} s, admitted {admitted * cost} over pods {sorted(pods)}: {ratio:.3f} of the quota"

    # Redis stops: each pod counts on its own buckets (when_unreachable:
    # local), answers every request, and says so in its metrics.
    cluster.procs["redis"].terminate()
    cluster.procs["redis"].wait()
    codes = [metered_request(i)[0] for i in range(10)]
    check(set(codes) <= {200, 429}, f"with Redis down: {codes}")
    check(200 in codes, f"with Redis down nothing was admitted: {codes}")
    for port in POD_PORTS:
        check(status(port, "GET", "/health/live") == 200, f"pod {port} not live with Redis down")
    local = [p for p in POD_PORTS if gauge(p, 'sluice:quota_store_mode{mode="local"}') == 1]
    check(local, "no pod reports sluice:quota_store_mode{mode=\"local\"} 1 with Redis down")
    cluster.start_redis()
    return report + f"; Redis stopped: {codes.count(200)} of 10 admitted locally, pods {local} in local mode"


# (check, whether it needs the EPP: prefix affinity and load from the
# processes' metrics are its; Envoy alone sees neither)
CHECKS = [
    (shared_prefix_goes_to_one_pod, True),
    (load_shifts_traffic, True),
    (sse_is_incremental, False),
    (disconnect_frees_the_sequence, False),
    (removed_pod_gets_no_traffic, False),
    (shared_quota_holds_across_pods, False),
    (killed_pod_costs_only_its_streams, False),
]


def main():
    """Arguments, if any, name the checks to run (all by default)."""
    only = set(sys.argv[1:])
    preflight()
    routing = default_routing()
    print(f"routing: {routing}" + ("" if routing == "epp" else " (no .cluster/bin/epp: see scripts/setup-cluster.sh)"))
    cluster = Cluster(routing=routing)
    failed = False
    try:
        cluster.start()
        for check_fn, needs_epp in CHECKS:
            if only and check_fn.__name__ not in only:
                continue
            if needs_epp and routing != "epp":
                print(f"skip {check_fn.__name__}: needs the EPP", flush=True)
                continue
            try:
                print(f"ok   {check_fn.__name__}: {check_fn(cluster)}", flush=True)
            except Failure as failure:
                print(f"FAIL {check_fn.__name__}: {failure}", flush=True)
                if not failed:
                    cluster.dump_logs()
                failed = True
    except Failure as failure:
        print(f"FAIL start: {failure}", flush=True)
        cluster.dump_logs()
        failed = True
    finally:
        cluster.stop()
        if not failed:
            shutil.rmtree(cluster.work, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
