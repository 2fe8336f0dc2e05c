#!/usr/bin/env python3
"""Row 8's attacker: wrong-password HTTP Basic requests over TLS from many loopback
source addresses, bounded in time and in count.

Each connection binds to a random address in 127.0.0.0/8 (never 127.0.0.1, which the
legitimate client uses), completes a TLS handshake, then sends up to --per-connection
wrong-password requests on it. Half the guesses target the real user name (so the
per-username throttle trips), half random user names (so every guess costs a hash
until the per-address throttle trips). Counts the answers by status and writes them
as JSON. Loopback only: it refuses any other target.

python3 flood.py --port 8443 --user bench --duration 12 --out flood.json
"""

import argparse
import asyncio
import base64
import ipaddress
import json
import os
import random
import ssl
import sys
import time


def source_pool(size, rng):
    pool = set()
    while len(pool) < size:
        addr = "127.%d.%d.%d" % (rng.randrange(0, 256), rng.randrange(0, 256), rng.randrange(1, 255))
        if addr != "127.0.0.1":
            pool.add(addr)
    return sorted(pool)


async def read_response(reader):
    """Returns (status, keep_alive). Reads exactly one response."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    keep_alive = True
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        value = value.strip()
        if name == "content-length":
            length = int(value)
        elif name == "connection" and value.lower() == "close":
            keep_alive = False
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, keep_alive


async def worker(args, ctx, pool, rng, stats, deadline):
    while time.monotonic() < deadline and stats["requests"] < args.max_requests:
        source = rng.choice(pool)
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    args.host, args.port, ssl=ctx, server_hostname="localhost",
                    local_addr=(source, 0)),
                timeout=5)
            stats["connections"] += 1
            for _ in range(args.per_connection):
                if time.monotonic() >= deadline or stats["requests"] >= args.max_requests:
                    break
                user = args.user if rng.random() < 0.5 else "u%06d" % rng.randrange(1000000)
                password = "wrong-%016x" % rng.getrandbits(64)
                cred = base64.b64encode(("%s:%s" % (user, password)).encode()).decode()
                request = ("GET %s HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic %s\r\n\r\n"
                           % (args.path, cred)).encode()
                stats["requests"] += 1
                writer.write(request)
                remaining = max(0.1, deadline + args.grace - time.monotonic())
                status, keep_alive = await asyncio.wait_for(read_response(reader), timeout=remaining)
                key = str(status)
                stats["status"][key] = stats["status"].get(key, 0) + 1
                if not keep_alive:
                    break
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ssl.SSLError, ValueError, IndexError) as e:
            kind = type(e).__name__
            stats["errors"][kind] = stats["errors"].get(kind, 0) + 1
            await asyncio.sleep(0.01)
        finally:
            if writer is not None:
                writer.transport.abort()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/")
    p.add_argument("--user", required=True)
    p.add_argument("--duration", type=float, required=True, help="seconds of flooding")
    p.add_argument("--grace", type=float, default=5.0, help="seconds to wait for answers after it")
    p.add_argument("--max-requests", type=int, default=200000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--per-connection", type=int, default=4)
    p.add_argument("--sources", type=int, default=2048, help="distinct source addresses")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    if not ipaddress.ip_address(args.host).is_loopback:
        sys.exit("flood.py floods loopback addresses only")
    args.duration = min(args.duration, 600.0)
    args.concurrency = max(1, min(args.concurrency, 1000))

    rng = random.Random(args.seed if args.seed is not None else int.from_bytes(os.urandom(8), "big"))
    pool = source_pool(args.sources, rng)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    stats = {"requests": 0, "connections": 0, "status": {}, "errors": {}}
    started = time.monotonic()
    deadline = started + args.duration
    tasks = [asyncio.create_task(worker(args, ctx, pool, rng, stats, deadline))
             for _ in range(args.concurrency)]
    done, pending = await asyncio.wait(tasks, timeout=args.duration + args.grace + 5)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    stats["seconds"] = round(time.monotonic() - started, 2)
    stats["sources"] = len(pool)
    stats["concurrency"] = args.concurrency
    with open(args.out, "w") as f:
        json.dump(stats, f)
    print(json.dumps(stats))


if __name__ == "__main__":
    asyncio.run(main())
