"""What a sleeping wait costs: one PING round trip, with a blocking read and with polling.

    python benchmarks/redis_roundtrip.py                        # Redis on 127.0.0.1:6379
    python benchmarks/redis_roundtrip.py --port 6391 -n 50000

A thread that sleeps in ``recv()`` until its reply arrives pays for going idle and for
being woken; on a virtual machine that can cost more than the rest of a loopback round
trip. This measures a bare ``PING`` (raw socket, no client library) both ways, which is
why a sync single enqueue polls for its reply before sleeping (``_spin.py``,
``?spin_us=``). It sends only ``PING``: any server will do.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import time

PING = b"*1\r\n$4\r\nPING\r\n"


def blocking(sock: socket.socket, n: int) -> float:
    sock.setblocking(True)
    buf = bytearray(64)
    started = time.perf_counter()
    for _ in range(n):
        sock.sendall(PING)
        sock.recv_into(buf)
    return (time.perf_counter() - started) / n


def polling(sock: socket.socket, n: int) -> float:
    sock.setblocking(True)
    buf = bytearray(64)
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    started = time.perf_counter()
    for _ in range(n):
        sock.sendall(PING)
        give_up = time.perf_counter() + 10.0  # a server that stopped answering
        while not poller.poll(0):
            if time.perf_counter() > give_up:
                raise SystemExit("no reply in 10 s")
        sock.recv_into(buf)
    return (time.perf_counter() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("-n", type=int, default=20_000, help="round trips per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with socket.create_connection((args.host, args.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        print(f"PING round trip to {args.host}:{args.port}, {os.cpu_count()} CPUs, n={args.n}")
        for _ in range(args.repeats):
            slept, polled = blocking(sock, args.n), polling(sock, args.n)
            print(f"blocking read {slept * 1e6:6.1f} µs   polling {polled * 1e6:6.1f} µs")


if __name__ == "__main__":
    main()
