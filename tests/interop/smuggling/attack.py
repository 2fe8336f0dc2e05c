"""Request-smuggling attempts through a front proxy (nginx or Caddy) in front of sallyport.

Each attempt hides a request for /public/smuggled-N in a message whose framing a front
end and a back end might read differently (CL.TE, TE.CL, obfuscated Transfer-Encoding,
bare LF, folded headers, bad chunk sizes). Whatever the front proxy makes of it, the
request it forwards to sallyport over a pooled keep-alive connection must not leave a
prefix behind: so after every attempt, victims on fresh client connections must each get
the answer to their own request. The caller also checks that no /public/smuggled-N ever
reached the application.

usage: attack.py HOST PORT     prints "ok NAME" or "FAIL NAME: why" per check
"""

import json
import socket
import sys

HOST, PORT = sys.argv[1], int(sys.argv[2])


def exchange(payload: bytes, timeout: float = 3.0) -> bytes:
    with socket.create_connection((HOST, PORT), timeout=timeout) as s:
        s.sendall(payload)
        out = b""
        try:
            while len(out) < 1 << 20:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        except (socket.timeout, ConnectionResetError):
            pass
        return out


def smuggled(n: int) -> bytes:
    return b"GET /public/smuggled-%d HTTP/1.1\r\nHost: localhost\r\nX-Pad: " % n


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def attempts():
    head = b"POST /public/attack HTTP/1.1\r\nHost: localhost\r\n"
    n = 0

    def next_n():
        nonlocal n
        n += 1
        return n

    s = smuggled(next_n())
    yield "CL.TE", head + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" % (5 + len(s)) + s
    s = smuggled(next_n()) + b"x\r\n\r\n"
    yield "TE.CL", head + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(s) + b"0\r\n\r\n"
    for name, te in [
        ("TE xchunked", b"Transfer-Encoding: xchunked"),
        ("TE space before colon", b"Transfer-Encoding : chunked"),
        ("TE tab value", b"Transfer-Encoding:\tchunked"),
        ("TE twice", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity"),
        ("TE folded", b"Transfer-Encoding:\r\n chunked"),
        ("TE leading space", b" Transfer-Encoding: chunked"),
        ("TE bare LF", b"X-A: b\nTransfer-Encoding: chunked"),
        ("TE vertical tab", b"Transfer-Encoding: chunked\x0b"),
        ("TE gzip, chunked", b"Transfer-Encoding: gzip, chunked"),
    ]:
        s = smuggled(next_n())
        body = b"0\r\n\r\n" + s
        yield name, head + te + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    s = smuggled(next_n())
    yield "two Content-Lengths", head + b"Content-Length: 0\r\nContent-Length: %d\r\n\r\n" % len(s) + s
    s = smuggled(next_n())
    yield "chunk size overflow", head + b"Transfer-Encoding: chunked\r\n\r\n10000000000000005\r\n" + s + b"\r\n0\r\n\r\n"
    s = smuggled(next_n())
    yield "chunk extension bare LF", head + b"Transfer-Encoding: chunked\r\n\r\n0;x\n\r\n" + s
    s = smuggled(next_n())
    yield "GET with a body", b"GET /public/attack HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % len(s) + s


def victim(i: int) -> str:
    path = "/public/victim-%d" % i
    raw = exchange(b"GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % path.encode())
    head, _, body = raw.partition(b"\r\n\r\n")
    status = head.split(b" ")[1:2]
    if status != [b"200"]:
        return "victim %s got %r" % (path, head[:80])
    try:
        seen = json.loads(body)["path"]
    except (ValueError, KeyError):
        return "victim %s got a body that is not the echo's: %r" % (path, body[:120])
    if seen != path:
        return "victim %s got the answer for %s" % (path, seen)
    return ""


def main():
    victims = 0
    for name, payload in attempts():
        answer = exchange(payload)
        status = answer.split(b" ")[1:2]
        # Any answer is fine (200, 400, 501, 502, a closed connection); what matters is
        # what the next requests see.
        problems = []
        for _ in range(3):
            victims += 1
            why = victim(victims)
            if why:
                problems.append(why)
        if problems:
            print("FAIL %s (front answered %r): %s" % (name, status, "; ".join(problems)))
        else:
            print("ok %s (front answered %s)" % (name, status[0].decode() if status else "nothing"))
        sys.stdout.flush()


main()
