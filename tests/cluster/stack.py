"""The local inference-gateway stack of docs/deploy.md ("One machine"), for
the cluster test (run.py) and the cluster benchmark
(benchmarks/cluster/run.py): Redis, three Sluice processes, and either the
llm-d endpoint picker (EPP) behind Envoy, as shipped in deploy/, or Envoy
alone with least-request balancing (deploy/local/envoy-least-request.yaml:
where the EPP cannot be had) or round-robin (the benchmark's baseline, the
same file with its policy swapped). Envoy names the process that answered
in the response header x-sluice-endpoint. The EPP and Envoy run from a copy
of deploy/ in a temporary folder, so the endpoints files can be edited
without touching the repository's.
"""

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SLUICE = ROOT / "target/release/sluice"
ENVOY = ROOT / ".cluster/bin/envoy"
EPP = ROOT / ".cluster/bin/epp"
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
GATEWAY = 8400
POD_PORTS = [8401, 8402, 8403]
REDIS_PORT = 8404  # deploy/local/sluice.yaml: admission.shared_quota
EPP_PORTS = [9002, 9003, 9090]
ENVOY_ADMIN = 9901
MODEL = "SmolLM2-135M-Instruct.Q4_1"

# A document long enough for several of the EPP's 64-token prefix blocks.
DOCUMENT = " ".join(
    f"Section {i}: the sluice gate at lock {i} opens when the level on the "
    f"upstream side is {i + 3} feet above the downstream side."
    for i in range(40)
)


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


def wait_until(what, predicate, timeout):
    """Polls `predicate` until it returns a truthy value or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Failure(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def port_open(port):
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def preflight():
    """Exits with what to run when a part of the stack is missing."""
    for path, how in [
        (SLUICE, "cargo build --release -p sluice"),
        (ENVOY, "scripts/setup-cluster.sh"),
        (Path(REDIS), "scripts/setup-cluster.sh"),
    ]:
        if not path.exists():
            sys.exit(f"{path} missing: run {how}")


def default_routing():
    """The EPP when it is built, else Envoy's least-request balancing."""
    return "epp" if EPP.exists() else "least-request"


class Cluster:
    """`routing`: "epp" (Envoy + the EPP, deploy/local/envoy.yaml),
    "least-request" (Envoy alone, deploy/local/envoy-least-request.yaml) or
    "round-robin" (the same with ROUND_ROBIN)."""

    def __init__(self, routing="epp", sluice_config="deploy/local/sluice.yaml"):
        self.routing = routing
        self.sluice_config = sluice_config
        self.work = Path(tempfile.mkdtemp(prefix="sluice-cluster-"))
        self.procs = {}
        for rel in [
            "deploy/epp/epp-config-local.yaml",
            "deploy/local/endpoints.yaml",
            "deploy/local/endpoints-envoy.yaml",
            "deploy/local/envoy.yaml",
            "deploy/local/envoy-least-request.yaml",
        ]:
            (self.work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / rel, self.work / rel)
        if routing == "round-robin":
            config = self.work / "deploy/local/envoy-least-request.yaml"
            text = config.read_text()
            check("lb_policy: LEAST_REQUEST" in text, "no LEAST_REQUEST policy to swap")
            config.write_text(text.replace("lb_policy: LEAST_REQUEST", "lb_policy: ROUND_ROBIN"))

    def spawn(self, name, argv, cwd=ROOT):
        log = open(self.work / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen(
            argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def start(self):
        busy = [p for p in [GATEWAY, ENVOY_ADMIN, REDIS_PORT, *POD_PORTS, *EPP_PORTS] if port_open(p)]
        check(not busy, f"ports already in use: {busy} (another cluster running?)")
        self.start_redis()
        for port in POD_PORTS:
            self.spawn(
                f"sluice-{port}",
                [SLUICE, "serve", "--config", self.sluice_config, "--port", str(port)],
            )
        for port in POD_PORTS:
            wait_until(f"sluice on {port} ready", lambda: status(port, "GET", "/health/ready") == 200, 120)
        if self.routing == "epp":
            self.spawn(
                "epp",
                [
                    EPP,
                    "--config-file=deploy/epp/epp-config-local.yaml",
                    "--pool-name=sluice",
                    "--pool-namespace=local",
                    "--grpc-port=9002",
                    "--grpc-health-port=9003",
                    "--metrics-port=9090",
                    "--secure-serving=false",
                    "--tracing=false",
                    "--enable-pprof=false",
                ],
                cwd=self.work,
            )
            envoy_config = "deploy/local/envoy.yaml"
        else:
            envoy_config = "deploy/local/envoy-least-request.yaml"
        self.spawn("envoy", [ENVOY, "-c", envoy_config, "--log-level", "warn"], cwd=self.work)
        if self.routing == "epp":
            wait_until("the EPP's ext_proc port", lambda: port_open(9002), 60)
        wait_until("a completion through the gateway", gateway_ok, 60)

    def start_redis(self):
        self.spawn(
            "redis",
            [REDIS, "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.work,
        )
        wait_until("redis-server", lambda: port_open(REDIS_PORT), 20)

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def kill(self, name):
        os.killpg(self.procs[name].pid, signal.SIGKILL)
        self.procs[name].wait()

    def set_endpoints(self, ports):
        """Rewrites both endpoints files (the EPP's and Envoy's) to list
        `ports`; each is replaced whole, as its reader expects."""
        epp = ["endpoints:"]
        for port in ports:
            epp += [
                f"- name: sluice-{port}",
                '  address: "127.0.0.1"',
                f'  port: "{port}"',
                "  labels:",
                "    llm-d.ai/engine-type: sluice",
            ]
        envoy = [
            "resources:",
            '- "@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment',
            "  cluster_name: sluice_endpoints",
            "  endpoints:",
            "  - lb_endpoints:",
        ] + [
            f"    - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}"
            for port in ports
        ]
        for name, lines in [("endpoints.yaml", epp), ("endpoints-envoy.yaml", envoy)]:
            target = self.work / "deploy/local" / name
            # Written beside the folder Envoy watches, then moved in.
            tmp = self.work / f"{name}.tmp"
            tmp.write_text("\n".join(lines) + "\n")
            tmp.replace(target)

    def dump_logs(self):
        for name in self.procs:
            text = (self.work / f"{name}.log").read_text(errors="replace").splitlines()
            print(f"--- {name}.log (last 12 lines) ---", file=sys.stderr)
            for line in text[-12:]:
                print(line, file=sys.stderr)


def status(port, method, path):
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request(method, path)
        return conn.getresponse().status
    except OSError:
        return None


def completion(prompt, max_tokens=4, port=GATEWAY, headers=None):
    """One non-streaming completion; returns (status, endpoint port, body)."""
    body = json.dumps(
        {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    )
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/v1/completions", body, {"content-type": "application/json", **(headers or {})})
    response = conn.getresponse()
    data = response.read()
    endpoint = response.getheader("x-sluice-endpoint")
    conn.close()
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = {"raw": data.decode(errors="replace")}
    return response.status, endpoint_port(endpoint), parsed


def gateway_ok():
    try:
        return completion("Hello", 1)[0] == 200
    except OSError:
        return False


def endpoint_port(header):
    return int(header.rsplit(":", 1)[1]) if header else None


class Stream:
    """A streamed completion read event by event."""

    def __init__(self, prompt, max_tokens, port=GATEWAY):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        body = json.dumps(
            {
                "model": MODEL,
                "prompt": prompt,
                "max_tokens": max_tokens,
                "ignore_eos": True,
                "stream": True,
            }
        )
        self.conn.request("POST", "/v1/completions", body, {"content-type": "application/json"})
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.endpoint = endpoint_port(self.response.getheader("x-sluice-endpoint"))

    def next_event(self):
        """The next `data:` payload, or None at the end of the stream."""
        while True:
            line = self.response.readline()
            if not line:
                return None
            line = line.strip()
            if line.startswith(b"data: "):
                return line[6:].decode()

    def drain(self):
        """Reads to the end; returns (events, finished with [DONE])."""
        events = 0
        try:
            while (event := self.next_event()) is not None:
                if event == "[DONE]":
                    return events, True
                events += 1
        except OSError:
            pass
        return events, False

    def close(self):
        # Shut the socket so the far end sees the disconnect at once.
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.conn.close()


def gauge(port, series):
    """The value of `series` (a name, or a name with its labels)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise Failure(f"{series} missing from the metrics of {port}")


def counter_total(port, name):
    """`name` summed over its labels, on one process."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )


def finished_total(port):
    return counter_total(port, "sluice:request_finished_total")


