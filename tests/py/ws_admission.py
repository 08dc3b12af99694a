"""WebSocket clients for admission control (tests/admission.rs), on the `websockets` library.

    ws_admission.py connect URL
        Prints `STATUS <code> <Retry-After>` when the handshake is refused, `OPEN` when not.
    ws_admission.py ops URL COUNT INTERVAL_MS
        Sends COUNT ops alternating subscribe/unsubscribe of one topic, INTERVAL_MS apart
        (0: all at once), reads until the server closes or 3 s pass without a message, and
        prints one JSON line: {"acks": n, "limited": n, "other": [..], "close": code|null}.
"""
import asyncio
import json
import sys

import websockets


async def connect(url):
    try:
        async with websockets.connect(url, open_timeout=10, close_timeout=2):
            print("OPEN", flush=True)
    except websockets.InvalidStatus as e:
        r = e.response
        print(f"STATUS {r.status_code} {r.headers.get('Retry-After', '-')}", flush=True)


async def ops(url, count, interval_ms):
    acks, limited, other, close = 0, 0, [], None
    async with websockets.connect(url, open_timeout=10, close_timeout=2, max_queue=None) as ws:
        async def send():
            for i in range(count):
                op = "subscribe" if i % 2 == 0 else "unsubscribe"
                try:
                    await ws.send(json.dumps({"op": op, "topic": "rate.t"}))
                except websockets.ConnectionClosed:
                    return
                if interval_ms:
                    await asyncio.sleep(interval_ms / 1000)

        sender = asyncio.create_task(send())
        while True:
            try:
                message = await asyncio.wait_for(ws.recv(), 3)
            except asyncio.TimeoutError:
                break
            except websockets.ConnectionClosed as e:
                close = e.rcvd.code if e.rcvd else None
                break
            event = json.loads(message).get("event")
            if event in ("ringcast.subscribed", "ringcast.unsubscribed"):
                acks += 1
            elif event == "ringcast.error" and "rate limit" in json.loads(message).get("reason", ""):
                limited += 1
            else:
                other.append(message)
        sender.cancel()
    print(json.dumps({"acks": acks, "limited": limited, "other": other[:5], "close": close}), flush=True)


mode = sys.argv[1]
if mode == "connect":
    asyncio.run(connect(sys.argv[2]))
else:
    asyncio.run(ops(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
