#!/usr/bin/env python3
"""An independent KV-event subscriber for tests/kv_events.rs: pyzmq and
msgpack only, no Sluice code. It subscribes to the endpoint in argv[1],
decodes every message as the llm-d vLLM adapter does (three frames: topic
kv@<pod>@<model>, big-endian u64 sequence number, msgpack [ts, [events]]),
and keeps the set of blocks held. Lines on stdout: "subscribed", then
"batch <seq>" per message. A line "dump" on stdin prints the state as one
JSON line; "stop" (or end of input) ends it.
"""

import json
import sys

import msgpack
import zmq

BLOCK = 16


def main():
    context = zmq.Context()
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.SUBSCRIBE, b"kv@")
    socket.connect(sys.argv[1])
    poller = zmq.Poller()
    poller.register(socket, zmq.POLLIN)
    poller.register(sys.stdin, zmq.POLLIN)
    live = {}  # block hash -> (parent hash or None, token ids)
    state = {"topics": [], "sequences": [], "unknown_removed": 0, "errors": []}
    print("subscribed", flush=True)
    while True:
        ready = dict(poller.poll(100))
        if socket in ready:
            frames = socket.recv_multipart()
            try:
                handle(frames, live, state)
            except Exception as error:  # reported, not fatal: the test reads it
                state["errors"].append(repr(error))
            print(f"batch {state['sequences'][-1] if state['sequences'] else '?'}", flush=True)
        if sys.stdin.fileno() in ready or sys.stdin in ready:
            line = sys.stdin.readline().strip()
            if line == "dump":
                blocks = {str(h): {"parent": None if p is None else str(p), "tokens": t} for h, (p, t) in live.items()}
                print(json.dumps({"blocks": blocks, **state}), flush=True)
            elif line in ("stop", ""):
                return


def handle(frames, live, state):
    if len(frames) != 3:
        raise ValueError(f"{len(frames)} frames")
    topic, sequence, payload = frames
    parts = topic.decode().split("@")
    if len(parts) != 3 or parts[0] != "kv":
        raise ValueError(f"topic {topic!r}")
    if topic.decode() not in state["topics"]:
        state["topics"].append(topic.decode())
    if len(sequence) != 8:
        raise ValueError(f"sequence frame of {len(sequence)} bytes")
    state["sequences"].append(int.from_bytes(sequence, "big"))
    batch = msgpack.unpackb(payload, raw=False)
    timestamp, events = batch[0], batch[1]
    if not isinstance(timestamp, float):
        raise ValueError(f"timestamp {timestamp!r}")
    for event in events:
        tag = event[0]
        if tag == "BlockStored":
            hashes, parent, tokens, block_size = event[1:5]
            if block_size != BLOCK or len(tokens) != BLOCK * len(hashes):
                raise ValueError(f"block size {block_size}, {len(tokens)} tokens for {len(hashes)} blocks")
            for i, block_hash in enumerate(hashes):
                live[block_hash] = (parent, tokens[i * BLOCK:(i + 1) * BLOCK])
                parent = block_hash
        elif tag == "BlockRemoved":
            for block_hash in event[1]:
                if live.pop(block_hash, None) is None:
                    state["unknown_removed"] += 1
        elif tag == "AllBlocksCleared":
            live.clear()
        else:
            raise ValueError(f"tag {tag!r}")


if __name__ == "__main__":
    main()
