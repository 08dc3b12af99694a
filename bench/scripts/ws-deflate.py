#!/usr/bin/env python3
"""permessage-deflate on and off, side by side: N WebSocket subscribers of one topic, E
JSON events of about 1 KiB published in one pipelined burst, timed until every subscriber
has every event.

For each round, for each mode (alternating off, on, off, on, ...), it starts the engine
(`--ws-deflate MODE --loops 1`, pinned to CPU 0 with taskset when there are two CPUs or
more), opens N subscribers that all offer `permessage-deflate` (declined when off), and
publishes E events over the ingest socket. Each subscriber parses frame headers only
(no inflating: a deflate client's inflate cost is the client's) and counts data frames.

Prints one JSON line per run and a summary of the on/off ratios per round:
  bytes_per_delivery  TCP payload bytes the subscribers received, per delivery
  deliveries_per_s    N*E / (last delivery - first publish)
  engine_cpu_us_per_event  engine utime+stime over the burst, per published event

Bounded: every wait has a deadline; the engine is killed by its PID at the end.
"""

import argparse
import json
import os
import select
import socket
import subprocess
import sys
import time

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def event_payload(i):
    items = ",".join(
        '{"sym":"S%02d","venue":"XNAS","px":%d.%02d,"qty":%d}' % (k, 100 + i + k, k, 10 * k + i)
        for k in range(24)
    )
    return ("[%s]" % items).encode()


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def start_engine(args, mode, port, sock_path):
    cmd = [args.engine, "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{port + 1}",
           "--ingest", sock_path, "--loops", "1", "--ws-deflate", mode,
           "--ws-deflate-min-bytes", "256"]
    if os.cpu_count() >= 2:
        cmd = ["taskset", "-c", "0"] + cmd
    log = open(f"/tmp/ws-deflate-engine-{mode}.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if os.path.exists(sock_path):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=1)
                s.close()
                return proc
            except OSError:
                pass
        time.sleep(0.1)
    proc.kill()
    sys.exit(f"engine did not start: see /tmp/ws-deflate-engine-{mode}.log")


def open_subscribers(port, n):
    request = (b"GET /ws?topic=d&format=raw HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + KEY +
               b"\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n")
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(request)
        socks.append(s)
    deflate = None
    for s in socks:
        head = b""
        deadline = time.monotonic() + 20
        while b"\r\n\r\n" not in head:
            if time.monotonic() > deadline:
                sys.exit("no 101 in time")
            head += s.recv(4096)
        assert head.startswith(b"HTTP/1.1 101"), head[:200]
        agreed = b"permessage-deflate" in head
        deflate = agreed if deflate is None else deflate
        assert agreed == deflate, "every subscriber negotiates alike"
        # Nothing is published yet, so nothing follows the head.
        assert head.endswith(b"\r\n\r\n"), head
        s.setblocking(False)
    return socks, deflate


class Reader:
    """Counts data frames from a byte stream by their headers alone."""

    __slots__ = ("hdr", "skip", "frames", "rsv1", "bytes")

    def __init__(self):
        self.hdr = b""
        self.skip = 0
        self.frames = 0
        self.rsv1 = 0
        self.bytes = 0

    def feed(self, data):
        self.bytes += len(data)
        # A header cut by the previous read is kept and completed here.
        buf = self.hdr + data if self.hdr else data
        self.hdr = b""
        pos, n = 0, len(buf)
        while pos < n:
            if self.skip:
                take = min(self.skip, n - pos)
                self.skip -= take
                pos += take
                continue
            if n - pos < 2:
                self.hdr = buf[pos:]
                break
            b0, ln = buf[pos], buf[pos + 1] & 0x7F
            need = 2 if ln < 126 else (4 if ln == 126 else 10)
            if n - pos < need:
                self.hdr = buf[pos:]
                break
            if ln == 126:
                ln = int.from_bytes(buf[pos + 2:pos + 4], "big")
            elif ln == 127:
                ln = int.from_bytes(buf[pos + 2:pos + 10], "big")
            pos += need
            if b0 & 0x0F in (1, 2):
                self.frames += 1
                if b0 & 0x40:
                    self.rsv1 += 1
            self.skip = ln
        return self.frames


def publish_burst(sock_path, events):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock_path)
    out = bytearray()
    for i in range(events):
        data = event_payload(i)
        out += b"PUB d %d\n" % len(data) + data + b"\n"
    s.sendall(out)
    return s


def wait_replies(s, events, deadline):
    got = b""
    while got.count(b"\n") < events and time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    assert got.count(b"+OK") == events, got[:300]


def run_once(args, mode, port):
    sock_path = f"/tmp/ws-deflate-{os.getpid()}-{mode}.sock"
    engine = start_engine(args, mode, port, sock_path)
    try:
        socks, agreed = open_subscribers(port, args.subs)
        assert agreed == (mode == "on"), (mode, agreed)
        readers = {s.fileno(): (s, Reader()) for s in socks}
        ep = select.epoll()
        for fd in readers:
            ep.register(fd, select.EPOLLIN)
        time.sleep(0.5)
        cpu0 = cpu_ticks(engine.pid)
        t0 = time.monotonic()
        pub = publish_burst(sock_path, args.events)
        done = 0
        deadline = t0 + args.timeout
        last = t0
        while done < len(readers) and time.monotonic() < deadline:
            for fd, _ in ep.poll(0.2):
                s, r = readers[fd]
                while True:
                    try:
                        data = s.recv(262144)
                    except BlockingIOError:
                        break
                    if not data:
                        ep.unregister(fd)
                        break
                    before = r.frames
                    if r.feed(data) >= args.events and before < args.events:
                        done += 1
                        last = time.monotonic()
        cpu1 = cpu_ticks(engine.pid)
        wait_replies(pub, args.events, time.monotonic() + 10)
        frames = sum(r.frames for _, r in readers.values())
        total = sum(r.bytes for _, r in readers.values())
        rsv1 = sum(r.rsv1 for _, r in readers.values())
        deliveries = args.subs * args.events
        hz = os.sysconf("SC_CLK_TCK")
        result = {
            "mode": mode,
            "subs": args.subs,
            "events": args.events,
            "event_bytes": len(event_payload(0)),
            "complete_subs": done,
            "data_frames": frames,
            "compressed_frames": rsv1,
            "bytes_received": total,
            "bytes_per_delivery": round(total / max(frames, 1), 1),
            "deliveries_per_s": round(deliveries / max(last - t0, 1e-9)),
            "engine_cpu_s": (cpu1 - cpu0) / hz,
            "engine_cpu_us_per_event": round((cpu1 - cpu0) / hz * 1e6 / args.events, 1),
            "engine_cpu_ns_per_delivery": round((cpu1 - cpu0) / hz * 1e9 / deliveries, 1),
        }
        for s in socks:
            s.close()
        pub.close()
        return result
    finally:
        engine.kill()
        engine.wait()
        try:
            os.unlink(sock_path)
        except OSError:
            pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="target/release/ringcast")
    parser.add_argument("--subs", type=int, default=10000)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--port", type=int, default=18600)
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    rounds = []
    for rnd in range(args.rounds):
        pair = {}
        for mode in ("off", "on"):
            r = run_once(args, mode, args.port + 10 * rnd + (0 if mode == "off" else 5))
            r["round"] = rnd + 1
            print(json.dumps(r), flush=True)
            pair[mode] = r
        rounds.append(pair)
    for pair in rounds:
        on, off = pair["on"], pair["off"]
        print(json.dumps({
            "round": on["round"],
            "bytes_on_over_off": round(on["bytes_per_delivery"] / off["bytes_per_delivery"], 3),
            "deliveries_per_s_on_over_off": round(on["deliveries_per_s"] / off["deliveries_per_s"], 3),
            "cpu_per_event_on_over_off": round(on["engine_cpu_us_per_event"] / max(off["engine_cpu_us_per_event"], 1e-9), 3),
        }), flush=True)


if __name__ == "__main__":
    main()
