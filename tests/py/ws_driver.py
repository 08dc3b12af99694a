#!/usr/bin/env python3
"""A real WebSocket client (Python `websockets`, sync API) driven line by line.

Used by tests/ws_clients.rs: the Rust test writes one JSON command per line on stdin,
publishes events between commands, and judges what this script prints. Every command
answers with exactly one JSON line on stdout: a flat object whose values are strings or
null (nested objects are flattened with dotted names, numbers and booleans become
strings), so that tests/support/json.rs can read it without a JSON crate.

Commands (`conn` names a connection, several may be open at once):

  {"op":"connect","conn":C,"url":U[,"headers":[[k,v],..]][,"origin":O][,"expect_status":N]}
      -> {"kind":"open",..} or, when the handshake is refused with the expected
         status (N != 101), {"kind":"rejected","status":"403",..}
  {"op":"send","conn":C,"text":T}   or   {"op":"send","conn":C,"binary_hex":H}
      -> {"kind":"sent",..}
  {"op":"recv","conn":C,"timeout_ms":N}
      -> {"kind":"msg","text":T,"j.<name>":..} (j.* is the text parsed as JSON, if it is)
  {"op":"quiet","conn":C,"ms":N}      no message may arrive for N ms -> {"kind":"quiet"}
  {"op":"alive","conn":C,"ms":N}      the connection must stay open for N ms, answering
                                      the server's pings (websockets does so itself);
                                      messages meanwhile are counted -> {"kind":"alive"}
  {"op":"close","conn":C}             -> {"kind":"closed","code":..}
  {"op":"exit"}                       exits 0

A failed expectation (a handshake status other than expected, no message in time, a
message during `quiet`, a close during `recv` or `alive`) prints {"kind":"fail",..} and
exits 1. The whole run is bounded by --timeout seconds (exit 3), and ends at stdin's EOF.
"""

import argparse
import json
import os
import sys
import threading
import time

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect


def flatten(value, prefix, out):
    """Flattens parsed JSON into out: dotted names, string or None values."""
    if isinstance(value, dict):
        for key, inner in value.items():
            flatten(inner, f"{prefix}.{key}", out)
    elif isinstance(value, list):
        out[prefix] = json.dumps(value)
    elif value is None:
        out[prefix] = None
    elif isinstance(value, bool):
        out[prefix] = "true" if value else "false"
    elif isinstance(value, str):
        out[prefix] = value
    else:
        out[prefix] = str(value)


def emit(kind, **fields):
    line = {"kind": kind}
    for key, value in fields.items():
        line[key] = None if value is None else str(value)
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def fail(reason, **fields):
    emit("fail", reason=reason, **fields)
    sys.exit(1)


def message_line(conn_name, message):
    line = {"kind": "msg", "conn": conn_name}
    if isinstance(message, bytes):
        line["binary_hex"] = message.hex()
    else:
        line["text"] = message
        try:
            parsed = json.loads(message)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            flatten(parsed, "j", line)
            if isinstance(parsed.get("data"), dict):
                line["j.data_type"] = "object"
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def closed_fields(conn):
    return {"code": conn.close_code, "close_reason": conn.close_reason}


def do_connect(conns, cmd):
    name = cmd["conn"]
    expect = int(cmd.get("expect_status", 101))
    headers = [tuple(pair) for pair in cmd.get("headers", [])]
    try:
        conn = connect(
            cmd["url"],
            origin=cmd.get("origin"),
            additional_headers=headers or None,
            proxy=None,
            open_timeout=10,
            # The test decides when the connection is idle; keep the client's own
            # pings out of the way (it still answers the server's).
            ping_interval=None,
            close_timeout=5,
            max_size=None,
        )
    except InvalidStatus as e:
        status = e.response.status_code
        if status == expect:
            emit("rejected", conn=name, status=status)
            return
        fail("handshake refused", conn=name, status=status, expected=expect)
    except (OSError, TimeoutError) as e:
        fail(f"connect failed: {e!r}", conn=name)
    if expect != 101:
        conn.close()
        fail("handshake succeeded", conn=name, status=101, expected=expect)
    conns[name] = conn
    emit("open", conn=name, subprotocol=conn.subprotocol,
         extensions=conn.response.headers.get("Sec-WebSocket-Extensions"))


def do_recv(conns, cmd):
    name = cmd["conn"]
    try:
        message = conns[name].recv(timeout=cmd["timeout_ms"] / 1000)
    except TimeoutError:
        fail("no message in time", conn=name, timeout_ms=cmd["timeout_ms"])
    except ConnectionClosed:
        fail("closed while waiting for a message", conn=name, **closed_fields(conns[name]))
    message_line(name, message)


def do_quiet(conns, cmd):
    name = cmd["conn"]
    try:
        message = conns[name].recv(timeout=cmd["ms"] / 1000)
    except TimeoutError:
        emit("quiet", conn=name)
        return
    except ConnectionClosed:
        fail("closed while it should stay quiet", conn=name, **closed_fields(conns[name]))
    fail("unexpected message", conn=name,
         text=message if isinstance(message, str) else message.hex())


def do_alive(conns, cmd):
    name = cmd["conn"]
    deadline = time.monotonic() + cmd["ms"] / 1000
    received = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            conns[name].recv(timeout=left)
            received += 1
        except TimeoutError:
            break
        except ConnectionClosed:
            fail("closed while it should stay open", conn=name, **closed_fields(conns[name]))
    emit("alive", conn=name, received=received)


def do_send(conns, cmd):
    name = cmd["conn"]
    if "binary_hex" in cmd:
        conns[name].send(bytes.fromhex(cmd["binary_hex"]))
    else:
        conns[name].send(cmd["text"])
    emit("sent", conn=name)


def do_close(conns, cmd):
    name = cmd["conn"]
    conn = conns.pop(name)
    conn.close()
    emit("closed", conn=name, **closed_fields(conn))


COMMANDS = {
    "connect": do_connect,
    "send": do_send,
    "recv": do_recv,
    "quiet": do_quiet,
    "alive": do_alive,
    "close": do_close,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=60, help="bound on the whole run, seconds")
    args = parser.parse_args()

    def give_up():
        emit("fail", reason=f"run exceeded {args.timeout} s")
        os._exit(3)

    timer = threading.Timer(args.timeout, give_up)
    timer.daemon = True
    timer.start()
    conns = {}
    for raw in sys.stdin:
        raw = raw.strip()
        if not raw:
            continue
        cmd = json.loads(raw)
        if cmd["op"] == "exit":
            break
        handler = COMMANDS.get(cmd["op"])
        if handler is None:
            fail(f"unknown command {cmd['op']!r}")
        if handler is not do_connect and cmd["conn"] not in conns:
            fail(f"no open connection {cmd['conn']!r}")
        handler(conns, cmd)
    for conn in conns.values():
        conn.close()
    timer.cancel()


if __name__ == "__main__":
    main()
