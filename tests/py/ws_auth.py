"""A WebSocket client with a subscriber token (tests/auth.rs), on the `websockets` library.

    ws_auth.py URL TOKEN REFRESH_TOKEN|- SECONDS

Connects with `Authorization: Bearer TOKEN`, prints every message it receives as one line,
answers `ringcast.expired` with `{"op":"refresh","token":REFRESH_TOKEN}` (unless `-`), and
prints `CLOSED <code>` when the server closes, or `DONE` after SECONDS.
"""
import asyncio
import json
import sys

import websockets


async def main(url, token, refresh, seconds):
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                                  open_timeout=10, close_timeout=2) as ws:
        print("OPEN", flush=True)
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while True:
            left = end - loop.time()
            if left <= 0:
                print("DONE", flush=True)
                return
            try:
                message = await asyncio.wait_for(ws.recv(), left)
            except asyncio.TimeoutError:
                print("DONE", flush=True)
                return
            except websockets.ConnectionClosed as e:
                print(f"CLOSED {e.rcvd.code if e.rcvd else None}", flush=True)
                return
            print(message, flush=True)
            if refresh != "-" and '"ringcast.expired"' in message:
                await ws.send(json.dumps({"op": "refresh", "token": refresh}))


asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])))
