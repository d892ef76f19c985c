#!/usr/bin/env python3
"""A client that opens one streaming completion, stops reading, then reads.

Usage: staller.py URL [--stall-seconds S] [--max-tokens N]

Speaks h2c (HTTP/2 without TLS) with only the standard library, announcing
a 4 KiB stream window and a small socket receive buffer, and sends no
WINDOW_UPDATE while it stalls: the server can get no further ahead of it
than that. Over HTTP/1.1 a small receive buffer alone would not stall the
server: on loopback its send buffer grows to megabytes, more than a whole
answer. After the stall it reads the stream to its end, widening the window
as it goes, and prints one JSON line: what it got and how the stream ended.
"""

import argparse
import json
import socket
import struct
import time
from urllib.parse import urlparse

STREAM_WINDOW = 4096
RECV_BUFFER = 4096
STREAM_ID = 1

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
SETTINGS_ENABLE_PUSH, SETTINGS_INITIAL_WINDOW_SIZE = 0x2, 0x4


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def hpack_int(value, prefix_bits, first_byte=0):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte | value])
    out = bytearray([first_byte | limit])
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def hpack_string(text):
    data = text.encode()
    return hpack_int(len(data), 7) + data


def header_block(headers):
    # Literal header fields without indexing, new names, no Huffman coding:
    # the server needs no table state from us.
    return b"".join(b"\x00" + hpack_string(name) + hpack_string(value) for name, value in headers)


def read_exactly(sock, size):
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    return bytes(data)


def read_frame(sock):
    head = read_exactly(sock, 9)
    length = int.from_bytes(head[:3], "big")
    stream = struct.unpack(">I", head[5:])[0] & 0x7FFFFFFF
    return head[3], head[4], stream, read_exactly(sock, length)


def summarize(body):
    events = [event for event in body.split("\n\n") if event.startswith("data: ")]
    payloads = [event[len("data: "):] for event in events]
    result = {"chunks": 0, "finish_reason": None, "error": None, "done": False}
    for payload in payloads:
        if payload == "[DONE]":
            result["done"] = True
            continue
        message = json.loads(payload)
        if "error" in message:
            result["error"] = message["error"]
            continue
        result["chunks"] += 1
        for choice in message.get("choices", []):
            result["finish_reason"] = choice.get("finish_reason") or result["finish_reason"]
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="server base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--stall-seconds", type=float, default=30.0)
    parser.add_argument("--max-tokens", type=int, default=900)
    parser.add_argument("--model", default="SmolLM2-135M-Instruct.Q4_1")
    args = parser.parse_args()
    url = urlparse(args.url)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
    sock.connect((url.hostname, url.port or 80))
    body = json.dumps({
        "model": args.model,
        "prompt": "Write a long story about a lighthouse keeper.",
        "max_tokens": args.max_tokens,
        "ignore_eos": True,
        "stream": True,
    }).encode()
    settings = struct.pack(">HI", SETTINGS_ENABLE_PUSH, 0) + struct.pack(">HI", SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW)
    headers = header_block([
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", url.netloc),
        (":path", "/v1/completions"),
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
    ])
    started = time.monotonic()
    sock.sendall(
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        + frame(SETTINGS, 0, 0, settings)
        + frame(HEADERS, END_HEADERS, STREAM_ID, headers)
        + frame(DATA, END_STREAM, STREAM_ID, body)
    )
    time.sleep(args.stall_seconds)

    received = bytearray()
    ended_by = None
    while ended_by is None:
        try:
            kind, flags, stream, payload = read_frame(sock)
        except ConnectionError as err:
            ended_by = str(err)
            break
        if kind == SETTINGS and not flags & ACK:
            sock.sendall(frame(SETTINGS, ACK, 0))
        elif kind == PING and not flags & ACK:
            sock.sendall(frame(PING, ACK, 0, payload))
        elif kind == DATA and stream == STREAM_ID:
            received += payload
            if payload:
                increment = struct.pack(">I", len(payload))
                sock.sendall(frame(WINDOW_UPDATE, 0, 0, increment) + frame(WINDOW_UPDATE, 0, STREAM_ID, increment))
        elif kind == RST_STREAM and stream == STREAM_ID:
            ended_by = f"RST_STREAM code {struct.unpack('>I', payload)[0]}"
        elif kind == GOAWAY:
            ended_by = f"GOAWAY code {struct.unpack('>I', payload[4:8])[0]}"
        if kind in (DATA, HEADERS) and stream == STREAM_ID and flags & END_STREAM:
            ended_by = "end of stream"
    sock.close()
    result = summarize(received.decode(errors="replace"))
    result.update({
        "ended_by": ended_by,
        "bytes": len(received),
        "stall_seconds": args.stall_seconds,
        "seconds": round(time.monotonic() - started, 3),
    })
    print(json.dumps(result))


if __name__ == "__main__":
    main()
