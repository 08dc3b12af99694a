"""A real WebSocket client (Python `websockets`) and a backend on the ingest socket
exchange messages through the engine: client -> MSG push -> backend -> SEND -> client.

usage: upstream_roundtrip.py HOST:PORT INGEST_PATH
Prints one JSON line with what was seen; exits non-zero on any mismatch.
"""
import asyncio
import json
import socket
import sys

import websockets

ADDR, INGEST = sys.argv[1], sys.argv[2]
TIMEOUT = 5


def fail(msg):
    print(json.dumps({"ok": False, "error": msg}))
    sys.exit(1)


class Backend:
    """A backend speaking the ingest protocol: UPSTREAM, then MSG pushes and SEND."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(INGEST)
        self.buf = b""

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                fail("backend connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode()

    def exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                fail("backend connection closed mid-payload")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def msg(self):
        head = self.line().split(" ")
        if head[0] != "MSG" or len(head) != 4:
            fail(f"expected a MSG push, got {head!r}")
        return head[1], head[3], self.exact(int(head[2]))

    def send(self, conn, payload):
        self.sock.sendall(b"SEND %s %d\n%s\n" % (conn.encode(), len(payload), payload))
        return self.line()


async def main():
    seen = {}
    async with websockets.connect(f"ws://{ADDR}/ws?topic=chat") as ws:
        await ws.send("before any backend")
        refused = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        if refused.get("event") != "ringcast.error" or "no backend" not in refused.get("reason", ""):
            fail(f"no-backend reply was {refused!r}")
        seen["refused"] = refused["reason"]

        backend = Backend()
        backend.sock.sendall(b"UPSTREAM\n")
        if backend.line() != "+OK upstream":
            fail("UPSTREAM not acknowledged")

        await ws.send("hello, backend\nsecond line")
        await ws.send(b"\x00\x01\xffbinary")
        conn, kind, text = backend.msg()
        if (kind, text) != ("text", b"hello, backend\nsecond line"):
            fail(f"first push was {kind} {text!r}")
        conn2, kind, data = backend.msg()
        if (conn2, kind, data) != (conn, "binary", b"\x00\x01\xffbinary"):
            fail(f"second push was {conn2} {kind} {data!r}")
        seen["conn"] = conn

        if backend.send(conn, "réponse ✓".encode()) != "+OK sent":
            fail("SEND not acknowledged")
        reply = await asyncio.wait_for(ws.recv(), TIMEOUT)
        if reply != "réponse ✓":
            fail(f"client got {reply!r}")
        if backend.send(conn, b"\xff\xfe") != "+OK sent":
            fail("binary SEND not acknowledged")
        reply = await asyncio.wait_for(ws.recv(), TIMEOUT)
        if reply != b"\xff\xfe":
            fail(f"client got {reply!r} for a binary SEND")
        seen["replies"] = 2

        bad = backend.send("9999.1.1", b"x")
        if not bad.startswith("-ERR"):
            fail(f"SEND to a loop that does not exist answered {bad!r}")

        # Subscriptions and upstream share the connection.
        await ws.send(json.dumps({"op": "subscribe", "topic": "room:1"}))
        ack = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        if ack != {"event": "ringcast.subscribed", "topic": "room:1"}:
            fail(f"subscribe answered {ack!r}")

        backend.sock.close()
        await asyncio.sleep(0.3)
        await ws.send("after the backend left")
        gone = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        if gone.get("event") != "ringcast.error":
            fail(f"after the backend left: {gone!r}")
    print(json.dumps({"ok": True, **seen}))


asyncio.run(asyncio.wait_for(main(), 20))
