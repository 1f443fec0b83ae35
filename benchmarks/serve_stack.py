"""Per-message cost of candidate server stacks for ``lstminfer serve`` (a script, not a benchmark test).

Each stack runs in its own process on 127.0.0.1 and echoes: an HTTP POST of a small JSON body
(keep-alive) and a WebSocket binary frame. The client is a blocking socket (HTTP, hand-written
HTTP/1.1) and ``websockets.sync`` (WebSocket), one request in flight. Reports the median and p99
round trip in µs and the server's CPU time per round trip (from /proc/PID/stat).

    python benchmarks/serve_stack.py [--n 3000] [--stacks aiohttp,uvicorn,starlette]
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

BODY = b'{"inputs": [{"name": "x", "shape": [1, 1, 2], "datatype": "FP32", "data": [0.5, 1.0]}]}'
FRAME = bytes(range(8)) * 20  # 160 bytes: one frame of 40 float32 features

SERVER = r'''
import asyncio, sys
stack, port = sys.argv[1], int(sys.argv[2])

if stack == "aiohttp":
    from aiohttp import web, WSMsgType
    async def infer(request):
        body = await request.read()
        return web.Response(body=body, content_type="application/json")
    async def ws(request):
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == WSMsgType.BINARY:
                await sock.send_bytes(msg.data)
        return sock
    app = web.Application()
    app.router.add_post("/infer", infer)
    app.router.add_get("/ws", ws)
    import uvloop
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
else:
    import uvicorn
    if stack.startswith("uvicorn"):
        async def app(scope, receive, send):
            if scope["type"] == "http":
                body, more = b"", True
                while more:
                    message = await receive()
                    body += message.get("body", b"")
                    more = message.get("more_body", False)
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
            elif scope["type"] == "websocket":
                await receive()
                await send({"type": "websocket.accept"})
                while True:
                    message = await receive()
                    if message["type"] == "websocket.disconnect":
                        return
                    await send({"type": "websocket.send", "bytes": message.get("bytes")})
            elif scope["type"] == "lifespan":
                while True:
                    message = await receive()
                    await send({"type": message["type"] + ".complete"})
                    if message["type"] == "lifespan.shutdown":
                        return
    else:
        from starlette.applications import Starlette
        from starlette.responses import Response
        from starlette.routing import Route, WebSocketRoute
        async def infer(request):
            return Response(await request.body(), media_type="application/json")
        async def ws(sock):
            await sock.accept()
            try:
                while True:
                    await sock.send_bytes(await sock.receive_bytes())
            except Exception:
                return
        app = Starlette(routes=[Route("/infer", infer, methods=["POST"]), WebSocketRoute("/ws", ws)])
    ws_impl = stack.partition(":")[2] or "websockets"
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", ws=ws_impl,
                log_level="warning", access_log=False, lifespan="off")
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_listening(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"server on port {port} did not start")


def http_round_trips(port: int, n: int) -> list[float]:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = (b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
    times = []
    for _ in range(n):
        start = time.perf_counter()
        sock.sendall(request)
        data = b""
        while True:
            data += sock.recv(65536)
            head, sep, rest = data.partition(b"\r\n\r\n")
            if sep:
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                if len(rest) >= length:
                    break
        times.append(time.perf_counter() - start)
    sock.close()
    return times


def ws_round_trips(port: int, n: int) -> list[float]:
    from websockets.sync.client import connect

    times = []
    with connect(f"ws://127.0.0.1:{port}/ws", compression=None) as ws:
        for _ in range(n):
            start = time.perf_counter()
            ws.send(FRAME)
            ws.recv()
            times.append(time.perf_counter() - start)
    return times


def measure(stack: str, n: int) -> dict:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, stack, str(port)])
    try:
        wait_listening(port, time.monotonic() + 20)
        result = {}
        for kind, run in (("http", http_round_trips), ("ws", ws_round_trips)):
            run(port, 200)  # warm up
            cpu0 = cpu_seconds(proc.pid)
            times = sorted(run(port, n))
            cpu = cpu_seconds(proc.pid) - cpu0
            result[kind] = (times[n // 2] * 1e6, times[int(n * 0.99)] * 1e6, cpu / n * 1e6)
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="round trips per measurement")
    parser.add_argument("--stacks", default="aiohttp,uvicorn:websockets,uvicorn:websockets-sansio,"
                                            "starlette")
    args = parser.parse_args()
    print(f"{'stack':28} {'HTTP p50 µs':>11} {'p99':>7} {'cpu µs':>7} {'WS p50 µs':>10} {'p99':>7} {'cpu µs':>7}")
    for stack in args.stacks.split(","):
        r = measure(stack, args.n)
        print(f"{stack:28} {r['http'][0]:11.0f} {r['http'][1]:7.0f} {r['http'][2]:7.0f} "
              f"{r['ws'][0]:10.0f} {r['ws'][1]:7.0f} {r['ws'][2]:7.0f}")


if __name__ == "__main__":
    main()
