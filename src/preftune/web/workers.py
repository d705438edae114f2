"""`serve --workers N`: N uvicorn processes, each accepting on its own socket (SO_REUSEPORT).

uvicorn's own `--workers` shares one listening socket. asyncio accepts every pending connection at
each wake-up, so whichever worker wakes first takes them all: seen here, 20 keep-alive annotator
connections opened together all went to one of two workers, and the other sat idle. With one
socket per worker bound to the same port with SO_REUSEPORT, the kernel spreads new connections
over the sockets by their addresses. The parent binds them all before starting any worker (no
worker can take the early connections alone), restarts a worker that dies, and on SIGINT or
SIGTERM stops them all. Where the platform has no SO_REUSEPORT, `serve` uses uvicorn's workers.
"""

from __future__ import annotations

import multiprocessing
import signal
import socket
import threading
from typing import Any

import uvicorn

APP = "preftune.web.asgi:app"
BACKLOG = 2048


def reuse_port_available() -> bool:
    return hasattr(socket, "SO_REUSEPORT")


def bind(host: str, port: int) -> socket.socket:
    # proto IPPROTO_TCP, as uvicorn does: asyncio sets TCP_NODELAY only on sockets that say so, and
    # without it Nagle's algorithm meets delayed ACKs and every response waits about 40 ms.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    return sock


def _worker(sock: socket.socket, options: dict[str, Any]) -> None:
    uvicorn.Server(uvicorn.Config(APP, **options)).run(sockets=[sock])


def run(host: str, port: int, workers: int, options: dict[str, Any]) -> None:
    """Serve `APP` from `workers` processes until SIGINT or SIGTERM; `options` go to uvicorn.Config."""
    sockets = [bind(host, port)]
    port = sockets[0].getsockname()[1]  # port 0: the one the first socket got, for all of them
    sockets += [bind(host, port) for _ in range(workers - 1)]
    options = {**options, "host": host, "port": port}
    context = multiprocessing.get_context("spawn")
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}

    def start(sock: socket.socket) -> multiprocessing.process.BaseProcess:
        process = context.Process(target=_worker, args=(sock, options))
        process.start()
        return process

    processes = [start(sock) for sock in sockets]
    try:
        while not stop.wait(0.5):
            for index, process in enumerate(processes):
                if not process.is_alive():
                    processes[index] = start(sockets[index])
    finally:
        for process in processes:
            process.terminate()  # SIGTERM: uvicorn finishes the requests in flight
        for process in processes:
            process.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sock in sockets:
            sock.close()
