#!/usr/bin/env python3
"""The idle-connection memory row: open N TLS keep-alive connections to a server,
complete the handshake and one request on each, hold them all, and report how much
the server's resident memory grew per connection.

The server's memory is the sum of VmRSS over the given PIDs (nginx: master and
workers), read from /proc before the first connection and once all are open.
Bounded: at most --count connections (<= 50000), --timeout seconds to open them.

python3 idle_conns.py --port 8443 --path /public/ --count 10000 --pids 1234 --out idle.json
"""

import argparse
import asyncio
import ipaddress
import json
import ssl
import sys
import time


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


async def open_one(args, ctx, sem, held, stats):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(args.host, args.port, ssl=ctx, server_hostname="localhost"),
                timeout=10)
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as e:
            stats["errors"][type(e).__name__] = stats["errors"].get(type(e).__name__, 0) + 1
            return
        try:
            writer.write(("GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % args.path).encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            status = head.split(b" ", 2)[1].decode()
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length:
                await asyncio.wait_for(reader.readexactly(length), timeout=10)
            stats["status"][status] = stats["status"].get(status, 0) + 1
            held.append(writer)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ssl.SSLError, ValueError, IndexError) as e:
            stats["errors"][type(e).__name__] = stats["errors"].get(type(e).__name__, 0) + 1
            writer.transport.abort()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/")
    p.add_argument("--count", type=int, default=10000)
    p.add_argument("--concurrency", type=int, default=128, help="handshakes in flight")
    p.add_argument("--pids", required=True, help="comma-separated server PIDs to measure")
    p.add_argument("--settle", type=float, default=2.0, help="seconds to wait before measuring")
    p.add_argument("--timeout", type=float, default=300.0, help="bound on opening them all")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    if not ipaddress.ip_address(args.host).is_loopback:
        sys.exit("idle_conns.py connects to loopback addresses only")
    args.count = max(1, min(args.count, 50000))
    pids = [int(x) for x in args.pids.split(",") if x]

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    before = rss_kib(pids)
    stats = {"status": {}, "errors": {}}
    held = []
    sem = asyncio.Semaphore(args.concurrency)
    started = time.monotonic()
    tasks = [asyncio.create_task(open_one(args, ctx, sem, held, stats)) for _ in range(args.count)]
    done, pending = await asyncio.wait(tasks, timeout=args.timeout)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    open_seconds = time.monotonic() - started
    await asyncio.sleep(args.settle)
    # Count the ones still open after settling (a server may have closed some).
    alive = sum(1 for w in held if not w.transport.is_closing())
    after = rss_kib(pids)
    for w in held:
        w.transport.abort()

    result = {
        "requested": args.count,
        "opened": len(held),
        "alive": alive,
        "cancelled": len(pending),
        "open_seconds": round(open_seconds, 1),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "per_connection_bytes": round((after - before) * 1024 / len(held)) if held else None,
        "status": stats["status"],
        "errors": stats["errors"],
    }
    with open(args.out, "w") as f:
        json.dump(result, f)
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
