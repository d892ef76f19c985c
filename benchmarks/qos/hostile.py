#!/usr/bin/env python3
"""Hostile clients beside a chaos or soak run (issue #13), loopback only.

For --seconds it keeps three kinds of misbehaving client going against
127.0.0.1:PORT, then stops by itself:

- --idle N sockets that connect and send nothing. When the server closes
  one it is counted (with how long it lived and what, if anything, the
  server said first) and reopened; the rest are held to the end.
- --slowloris M sockets that send the start of a request and then one more
  header byte every --slowloris-interval seconds, never finishing the
  header. Closed ones are counted and reopened the same way.
- bad requests at --bad-rate per second, each on its own connection,
  cycling through BAD_KINDS in a seeded order: each should get a 4xx
  (non-HTTP garbage and an oversized body may instead be refused by
  closing the connection), never a 5xx and never a hang (no answer within
  --timeout seconds; --generation-timeout for a valid body sent with the
  wrong Content-Type, which a lenient server admits as a streamed
  one-token generation: its 200 may wait in the admission queue).

It prints one JSON summary (also written to --out): per kind and status
counts, the 5xx and hang counts with the exact request and response of the
first ones, idle and slowloris socket lifetimes (p50/max) and reconnects,
and whether the server closed those sockets or they were held to the end.
Exit status: 0, or 1 on any 5xx or hang (also on an unexpected 2xx/3xx
with --strict), 2 on bad arguments.

Python 3 standard library only.
"""

import argparse
import asyncio
import ipaddress
import json
import os
import random
import resource
import sys
import time

# Each bad request kind, what it sends, and the answers accepted as a
# refusal besides a 4xx ("closed": the server closed the connection
# without an HTTP answer).
BAD_KINDS = (
    "malformed_json",
    "wrong_content_type",
    "unknown_model",
    "negative_max_tokens",
    "oversized_body",
    "unknown_api_key",
    "missing_admin_key",
    "header_flood",
    "garbage",
    "ws_no_key",
)
CLOSE_IS_REFUSAL = {"garbage", "oversized_body"}
# Kinds a lenient server may accept and run as a generation (one token,
# streamed): their answer may wait in the admission queue like any
# request, so they get --generation-timeout, not --timeout, before they
# count as a hang.
MAY_GENERATE = {"wrong_content_type"}
# Caps, so a typo cannot turn this into a flood.
MAX_IDLE = 2000
MAX_SLOWLORIS = 500
MAX_BAD_RATE = 50.0
MAX_SECONDS = 6 * 3600
RESPONSE_HEAD_LIMIT = 64 * 1024
KEEP_FAILURES = 20
# A socket the server closed within this long is reopened only after it,
# so a server that refuses at once is not hammered.
REOPEN_BACKOFF = 1.0


def percentile(values, q):
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[index], 3)


def spread(values):
    return {
        "count": len(values),
        "p50": percentile(values, 0.5),
        "max": round(max(values), 3) if values else None,
        "min": round(min(values), 3) if values else None,
    }


class Pool:
    """Counters for one kind of long-lived socket (idle or slowloris)."""

    def __init__(self, name, sockets):
        self.name = name
        self.sockets = sockets
        self.opened = 0
        self.connect_errors = 0
        self.closed_lifetimes = []
        self.held_ages = []
        self.server_said = {}
        self.closed_how = {}
        self.bytes_sent = 0

    def closed(self, lifetime, first_bytes, how):
        self.closed_lifetimes.append(lifetime)
        self.closed_how[how] = self.closed_how.get(how, 0) + 1
        if first_bytes:
            line = first_bytes.split(b"\r\n", 1)[0][:80].decode("latin-1")
            self.server_said[line] = self.server_said.get(line, 0) + 1

    def summary(self):
        closed = len(self.closed_lifetimes)
        held = len(self.held_ages)
        if closed and held and max(self.held_ages) <= max(self.closed_lifetimes) + 1:
            behaviour = (
                f"closed by the server after {percentile(self.closed_lifetimes, 0.5):.0f} s (p50); "
                "those open at the end were younger than that"
            )
        elif closed and held:
            behaviour = "mixed: some closed by the server, some held longer than any closed one lived"
        elif closed:
            behaviour = "closed by the server"
        elif held:
            behaviour = "held to the end (the server never closed them)"
        else:
            behaviour = "none opened"
        return {
            "sockets": self.sockets,
            "opened": self.opened,
            "reconnects": max(0, self.opened - self.sockets),
            "connect_errors": self.connect_errors,
            "closed_by_server": closed,
            "closed_how": self.closed_how,
            "server_said_before_closing": self.server_said,
            "held_to_end": held,
            "behaviour": behaviour,
            "lifetime_closed_seconds": spread(self.closed_lifetimes),
            "age_held_seconds": spread(self.held_ages),
            **({"bytes_sent": self.bytes_sent} if self.name == "slowloris" else {}),
        }


class Hostile:
    def __init__(self, args):
        self.args = args
        self.host = args.host
        self.port = args.port
        self.stop = asyncio.Event()
        self.deadline = None
        self.idle = Pool("idle", args.idle)
        self.slowloris = Pool("slowloris", args.slowloris)
        self.bad_by_kind = {
            kind: {"sent": 0, "status": {}, "refused": 0, "unexpected": 0, "5xx": 0, "hangs": 0}
            for kind in self.kinds()
        }
        self.bad_latencies = []
        self.failures = []
        self.surprises = []
        self.examples = {}
        self.skipped = 0
        self.inflight = 0
        self.model = args.model

    def kinds(self):
        return [k for k in self.args.kinds.split(",") if k]

    # ---- long-lived sockets ----

    async def open(self, pool):
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.args.timeout
            )
        except (OSError, asyncio.TimeoutError):
            pool.connect_errors += 1
            return None
        pool.opened += 1
        return reader, writer

    async def watch_close(self, reader):
        """Reads until the server closes; returns (first bytes, how)."""
        first = b""
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    return first, "eof"
                if len(first) < 256:
                    first += data[: 256 - len(first)]
        except ConnectionResetError:
            return first, "reset"
        except OSError as err:
            return first, f"error {err.errno}"

    async def hold(self, pool, index, talk=None):
        # Spread the opening over the first seconds instead of a burst.
        await self.sleep(index * 0.02)
        while not self.stop.is_set():
            conn = await self.open(pool)
            if conn is None:
                await self.sleep(REOPEN_BACKOFF)
                continue
            reader, writer = conn
            opened = time.monotonic()
            watcher = asyncio.ensure_future(self.watch_close(reader))
            talker = asyncio.ensure_future(talk(writer)) if talk else None
            stopper = asyncio.ensure_future(self.stop.wait())
            await asyncio.wait([watcher, stopper], return_when=asyncio.FIRST_COMPLETED)
            lifetime = time.monotonic() - opened
            if talker:
                talker.cancel()
            if watcher.done():
                stopper.cancel()
                first, how = watcher.result()
                pool.closed(lifetime, first, how)
            else:
                watcher.cancel()
                pool.held_ages.append(lifetime)
            writer.close()
            if watcher.done() and lifetime < REOPEN_BACKOFF:
                await self.sleep(REOPEN_BACKOFF)

    async def slowloris_talk(self, writer):
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Content-Type: application/json\r\nX-Slowloris: "
        ).encode()
        try:
            writer.write(head)
            await writer.drain()
            self.slowloris.bytes_sent += len(head)
            while True:
                await asyncio.sleep(self.args.slowloris_interval)
                # Header value bytes only: the header never ends.
                writer.write(b"a")
                await writer.drain()
                self.slowloris.bytes_sent += 1
        except (OSError, asyncio.CancelledError):
            return

    # ---- bad requests ----

    def chat_body(self, **overrides):
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 1,
            "stream": False,
        }
        body.update(overrides)
        return json.dumps(body).encode()

    def http(self, method, path, headers, body=b"", connection="close"):
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Connection: {connection}"]
        lines += [f"{name}: {value}" for name, value in headers]
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def build(self, kind):
        """(request head+body bytes, extra body bytes to stream after it)."""
        auth = ("Authorization", f"Bearer {self.args.api_key}")
        json_ct = ("Content-Type", "application/json")
        chat = "/v1/chat/completions"
        if kind == "malformed_json":
            body = b'{"model": "' + self.model.encode() + b'", "messages": [{"role": "user", "content": "hi"'
            return self.http("POST", chat, [auth, json_ct], body), 0
        if kind == "wrong_content_type":
            # A valid body sent as a form. Streamed (one token), so a server
            # that accepts it answers 200 once the request is admitted, not
            # after the engine's queue: the head is read and the connection
            # closed, which cancels the generation.
            return self.http(
                "POST",
                chat,
                [auth, ("Content-Type", "application/x-www-form-urlencoded")],
                self.chat_body(stream=True),
            ), 0
        if kind == "unknown_model":
            return self.http("POST", chat, [auth, json_ct], self.chat_body(model="no-such-model-hostile")), 0
        if kind == "negative_max_tokens":
            return self.http("POST", chat, [auth, json_ct], self.chat_body(max_tokens=-5)), 0
        if kind == "oversized_body":
            size = self.args.max_body_bytes + 64 * 1024
            head = (
                f"POST {chat} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nConnection: close\r\n"
                f"Authorization: Bearer {self.args.api_key}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {size}\r\n\r\n"
            ).encode()
            return head, size
        if kind == "unknown_api_key":
            return self.http(
                "POST", chat, [("Authorization", "Bearer sk-hostile-unknown-key"), json_ct], self.chat_body()
            ), 0
        if kind == "missing_admin_key":
            return self.http("GET", "/admin/state", []), 0
        if kind == "header_flood":
            flood = [(f"X-Flood-{i}", "x" * 16) for i in range(self.args.flood_headers)]
            return self.http("GET", "/v1/models", flood), 0
        if kind == "garbage":
            # Alternates a TLS ClientHello (TLS to the cleartext port) and
            # random bytes that cannot start an HTTP method.
            if self.bad_by_kind[kind]["sent"] % 2 == 0:
                return bytes.fromhex("160301012c010001280303") + os.urandom(32) + b"\x00\x02\x13\x01\x01\x00", 0
            return b"\x00\xff" + os.urandom(510), 0
        if kind == "ws_no_key":
            return self.http(
                "GET",
                "/v1/ws",
                [auth, ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")],
                connection="Upgrade",
            ), 0
        raise ValueError(kind)

    async def read_head(self, reader):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as err:
            return err.partial, "eof"
        except asyncio.LimitOverrunError:
            return await reader.read(RESPONSE_HEAD_LIMIT), "overrun"
        except ConnectionResetError:
            return b"", "reset"
        except OSError as err:
            return b"", f"error {err.errno}"
        # A short error body, for the examples.
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                try:
                    length = int(line.split(b":", 1)[1])
                except ValueError:
                    pass
        body = b""
        if 0 < length <= 4096:
            try:
                body = await reader.readexactly(length)
            except (asyncio.IncompleteReadError, OSError):
                pass
        return head + body, "response"

    async def stream_body(self, writer, size):
        chunk = b" " * 65536
        sent = 0
        try:
            while sent < size:
                n = min(len(chunk), size - sent)
                writer.write(chunk[:n])
                await writer.drain()
                sent += n
        except (OSError, asyncio.CancelledError):
            return

    async def bad_request(self, kind):
        stats = self.bad_by_kind[kind]
        request, extra = self.build(kind)
        stats["sent"] += 1
        deadline = self.args.generation_timeout if kind in MAY_GENERATE else self.args.timeout
        started = time.monotonic()
        outcome, response = None, b""
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=RESPONSE_HEAD_LIMIT), self.args.timeout
            )
            writer.write(request)
            streamer = asyncio.ensure_future(self.stream_body(writer, extra)) if extra else None
            try:
                await writer.drain()
                response, how = await asyncio.wait_for(self.read_head(reader), deadline)
            finally:
                if streamer:
                    streamer.cancel()
            outcome = self.classify(response, how)
        except asyncio.TimeoutError:
            outcome = "hang"
        except ConnectionResetError:
            outcome = "closed"
        except OSError as err:
            outcome = f"connect_error {err.errno}"
        finally:
            if writer is not None:
                writer.close()
        latency = time.monotonic() - started
        self.bad_latencies.append(latency)
        stats["status"][outcome] = stats["status"].get(outcome, 0) + 1
        self.judge(kind, stats, outcome, request, extra, response, latency)

    @staticmethod
    def classify(response, how):
        if response.startswith(b"HTTP/"):
            parts = response.split(b" ", 2)
            if len(parts) >= 2 and parts[1].isdigit():
                return parts[1].decode()
            return "malformed_response"
        if how in ("eof", "reset") and not response:
            return "closed"
        return "not_http" if response else how

    def judge(self, kind, stats, outcome, request, extra, response, latency):
        unexpected = False
        if outcome.isdigit() and outcome.startswith("4"):
            stats["refused"] += 1
        elif outcome == "closed" and kind in CLOSE_IS_REFUSAL:
            stats["refused"] += 1
        elif outcome.isdigit() and outcome.startswith("5"):
            stats["5xx"] += 1
        elif outcome == "hang":
            stats["hangs"] += 1
        else:
            stats["unexpected"] += 1
            unexpected = True
        failed = outcome == "hang" or outcome.startswith("5") or (unexpected and self.args.strict)
        if kind not in self.examples and response:
            self.examples[kind] = self.show(response, 300)
        # Every failure (up to KEEP_FAILURES) and each kind's first
        # unexpected answer, with the exact request and response.
        if failed or (unexpected and stats["unexpected"] == 1):
            target = self.failures if failed else self.surprises
            if len(target) < KEEP_FAILURES:
                target.append(
                    {
                        "kind": kind,
                        "outcome": outcome,
                        "seconds": round(latency, 3),
                        "request": self.show(request, 600) + (f" ... then {extra} body bytes" if extra else ""),
                        "response": self.show(response, 600),
                    }
                )

    @staticmethod
    def show(data, limit):
        text = data[:limit].decode("latin-1")
        text = text.encode("unicode_escape").decode("ascii")
        return text + (f"... ({len(data)} bytes)" if len(data) > limit else "")

    async def bad_loop(self):
        if self.args.bad_rate <= 0 or not self.kinds():
            return
        rng = random.Random(self.args.seed)
        order = []
        interval = 1.0 / self.args.bad_rate
        next_at = time.monotonic()
        tasks = set()
        while not self.stop.is_set():
            if not order:
                order = self.kinds()
                rng.shuffle(order)
            kind = order.pop()
            if self.inflight >= self.args.max_inflight:
                self.skipped += 1
            else:
                self.inflight += 1
                task = asyncio.ensure_future(self.bad_request(kind))
                tasks.add(task)
                task.add_done_callback(self.bad_done(tasks))
            next_at += interval
            await self.sleep(max(0.0, next_at - time.monotonic()))
        if tasks:
            await asyncio.wait(tasks, timeout=max(self.args.timeout, self.args.generation_timeout) + 5)

    def bad_done(self, tasks):
        def done(task):
            tasks.discard(task)
            self.inflight -= 1
            if not task.cancelled() and task.exception() is not None:
                err = task.exception()
                self.failures.append({"kind": "internal", "outcome": repr(err)})

        return done

    # ---- driver ----

    async def sleep(self, seconds):
        try:
            await asyncio.wait_for(self.stop.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def served_model(self):
        if self.model:
            return
        self.model = "unknown"
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 5)
            writer.write(self.http("GET", "/v1/models", [("Authorization", f"Bearer {self.args.api_key}")]))
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            body = data.split(b"\r\n\r\n", 1)[1]
            self.model = json.loads(body)["data"][0]["id"]
        except (OSError, asyncio.TimeoutError, ValueError, KeyError, IndexError) as err:
            print(f"hostile: cannot read /v1/models ({err!r}); using model 'unknown'", file=sys.stderr)

    async def progress(self):
        started = time.monotonic()
        while not self.stop.is_set():
            await self.sleep(self.args.progress)
            if self.stop.is_set():
                break
            bad = self.bad_totals()
            print(
                f"hostile: {time.monotonic() - started:.0f} s: bad {bad['sent']} sent, {bad['5xx']} 5xx, "
                f"{bad['hangs']} hangs; idle closed {len(self.idle.closed_lifetimes)}, "
                f"slowloris closed {len(self.slowloris.closed_lifetimes)}",
                file=sys.stderr,
                flush=True,
            )

    def bad_totals(self):
        totals = {"sent": 0, "refused": 0, "unexpected": 0, "5xx": 0, "hangs": 0}
        status = {}
        for stats in self.bad_by_kind.values():
            for key in totals:
                totals[key] += stats[key]
            for code, n in stats["status"].items():
                status[code] = status.get(code, 0) + n
        return {**totals, "status": dict(sorted(status.items()))}

    async def run(self):
        await self.served_model()
        started = time.monotonic()
        tasks = [asyncio.ensure_future(self.hold(self.idle, i)) for i in range(self.args.idle)]
        tasks += [
            asyncio.ensure_future(self.hold(self.slowloris, i, self.slowloris_talk)) for i in range(self.args.slowloris)
        ]
        tasks.append(asyncio.ensure_future(self.bad_loop()))
        if self.args.progress > 0:
            tasks.append(asyncio.ensure_future(self.progress()))
        await self.sleep(self.args.seconds)
        self.stop.set()
        await asyncio.wait(tasks, timeout=max(self.args.timeout, self.args.generation_timeout) + 10)
        for task in tasks:
            task.cancel()
        elapsed = time.monotonic() - started
        bad = self.bad_totals()
        summary = {
            "target": f"{self.host}:{self.port}",
            "seconds": round(elapsed, 1),
            "args": {k: v for k, v in vars(self.args).items() if k not in ("out",)},
            "model": self.model,
            "idle": self.idle.summary(),
            "slowloris": self.slowloris.summary(),
            "bad_requests": {
                **bad,
                "skipped_at_inflight_cap": self.skipped,
                "latency_seconds": spread(self.bad_latencies),
                "by_kind": self.bad_by_kind,
                "first_answer_by_kind": self.examples,
                "failures": self.failures,
                "first_unexpected_by_kind": self.surprises,
            },
        }
        failed = bad["5xx"] + bad["hangs"] + (bad["unexpected"] if self.args.strict else 0)
        summary["ok"] = failed == 0
        return summary


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address (default 127.0.0.1)")
    parser.add_argument("--seconds", type=float, default=60, help="how long to run (default 60)")
    parser.add_argument("--idle", type=int, default=200, help="idle sockets held open (default 200)")
    parser.add_argument("--slowloris", type=int, default=50, help="slowloris sockets (default 50)")
    parser.add_argument(
        "--slowloris-interval", type=float, default=5, help="seconds between a slowloris socket's bytes (default 5)"
    )
    parser.add_argument("--bad-rate", type=float, default=2, help="bad requests per second (default 2)")
    parser.add_argument("--kinds", default=",".join(BAD_KINDS), help="bad request kinds, comma-separated")
    parser.add_argument("--timeout", type=float, default=10, help="a bad request's answer deadline, s (default 10)")
    parser.add_argument(
        "--generation-timeout",
        type=float,
        default=90,
        help="the deadline for a bad request the server may run as a generation, s (default 90: "
        "over admission's default 60 s queue wait)",
    )
    parser.add_argument("--max-inflight", type=int, default=64, help="bad requests in flight at most (default 64)")
    parser.add_argument("--max-body-bytes", type=int, default=1024 * 1024, help="the server's server.max_body_bytes")
    parser.add_argument("--flood-headers", type=int, default=200, help="headers in a header flood (default 200)")
    parser.add_argument("--api-key", default="sk-normal", help="a valid API key, for requests bad in other ways")
    parser.add_argument("--model", default="", help="the served model (default: read from /v1/models)")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--strict", action="store_true", help="fail on a 2xx/3xx to a bad request too")
    parser.add_argument("--progress", type=float, default=300, help="a progress line on stderr every N s (0: none)")
    parser.add_argument("--out", help="also write the JSON summary here")
    args = parser.parse_args(argv)
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        parser.error(f"--host must be a loopback address, not {args.host!r}")
    unknown = set(args.kinds.split(",")) - set(BAD_KINDS) - {""}
    if unknown:
        parser.error(f"unknown --kinds {sorted(unknown)}; known: {','.join(BAD_KINDS)}")
    checks = [
        (0 < args.seconds <= MAX_SECONDS, f"--seconds must be in (0, {MAX_SECONDS}]"),
        (0 <= args.idle <= MAX_IDLE, f"--idle must be in [0, {MAX_IDLE}]"),
        (0 <= args.slowloris <= MAX_SLOWLORIS, f"--slowloris must be in [0, {MAX_SLOWLORIS}]"),
        (0 <= args.bad_rate <= MAX_BAD_RATE, f"--bad-rate must be in [0, {MAX_BAD_RATE}]"),
        (
            args.slowloris_interval > 0 and 0 < args.timeout <= 600 and 0 < args.generation_timeout <= 600,
            "--slowloris-interval must be positive, --timeout and --generation-timeout in (0, 600]",
        ),
        (1 <= args.max_inflight <= 256, "--max-inflight must be in [1, 256]"),
        (0 <= args.flood_headers <= 10000, "--flood-headers must be in [0, 10000]"),
    ]
    for ok, message in checks:
        if not ok:
            parser.error(message)
    return args


def raise_fd_limit(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def main(argv):
    args = parse_args(argv)
    raise_fd_limit(args.idle + args.slowloris + args.max_inflight + 64)
    summary = asyncio.run(Hostile(args).run())
    text = json.dumps(summary, indent=1, sort_keys=False)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
