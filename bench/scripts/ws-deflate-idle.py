#!/usr/bin/env python3
"""Engine RSS per idle WebSocket, permessage-deflate off and on, 10,000 subscribers that
all offer it (run from the repository root; uses ws-deflate.py beside it)."""
import importlib.util, time, json, sys
spec = importlib.util.spec_from_file_location('w', __file__.replace('ws-deflate-idle.py', 'ws-deflate.py')); m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
class A: engine = 'target/release/ringcast'
def rss(pid):
    for l in open(f'/proc/{pid}/status'):
        if l.startswith('VmRSS'): return int(l.split()[1])
for rnd in range(2):
    for mode in ('off', 'on'):
        port = 18900 + rnd * 10 + (0 if mode == 'off' else 5)
        path = f'/tmp/ws-deflate-idle-{mode}.sock'
        e = m.start_engine(A, mode, port, path)
        try:
            time.sleep(0.5); r0 = rss(e.pid)
            socks, agreed = m.open_subscribers(port, 10000)
            time.sleep(1.0); r1 = rss(e.pid)
            print(json.dumps({'round': rnd + 1, 'mode': mode, 'deflate_agreed': agreed, 'rss_before_kib': r0, 'rss_10k_kib': r1, 'bytes_per_conn': round((r1 - r0) * 1024 / 10000)}), flush=True)
            for s in socks: s.close()
        finally:
            e.kill(); e.wait()
            import os
            try: os.unlink(path)
            except OSError: pass
