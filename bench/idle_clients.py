#!/usr/bin/env python3
"""Scenario 5's client: opens N keep-alive connections to a proxy, sends one request on each
(GET /ok, HTTP/1.1), reads the whole response, then keeps every connection open and idle.

    idle_clients.py HOST PORT N

Prints `ready <open> <failed>` once all are open, then waits until stdin closes (or reads a
line), and closes every connection with a reset (SO_LINGER 0) so that no TIME_WAIT entries
pile up across rounds.
"""
import asyncio
import resource
import socket
import struct
import sys

CONCURRENT_OPENS = 200


async def open_one(host, port, sem, conns, failures):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), timeout=30
            )
            writer.write(b"GET /ok HTTP/1.1\r\nHost: bench\r\nUser-Agent: idle-client\r\n\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await asyncio.wait_for(reader.readexactly(length), timeout=30)
            if not head.startswith(b"HTTP/1.1 200"):
                failures.append(head.split(b"\r\n", 1)[0])
            conns.append(writer)
        except Exception as err:  # noqa: BLE001 - any failure is counted, not fatal
            failures.append(repr(err))


async def main():
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sem = asyncio.Semaphore(CONCURRENT_OPENS)
    conns, failures = [], []
    await asyncio.gather(
        *(open_one(host, port, sem, conns, failures) for _ in range(count))
    )
    print(f"ready {len(conns)} {len(failures)}", flush=True)
    if failures:
        print(f"first failure: {failures[0]}", file=sys.stderr, flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    linger = struct.pack("ii", 1, 0)
    for writer in conns:
        sock = writer.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        except OSError:
            pass
        writer.close()
    await asyncio.sleep(0.2)


if __name__ == "__main__":
    asyncio.run(main())
