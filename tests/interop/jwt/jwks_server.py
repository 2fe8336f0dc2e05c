#!/usr/bin/env python3
"""A stand-in IdP key endpoint: serves files from a directory over HTTPS (stdlib only).

Files are read on every request, so the test rotates keys by replacing a file and
simulates an outage by killing the process. Each request is logged to stderr, so the test
can tell which paths were fetched.

usage: jwks_server.py DIR CERT KEY PORTFILE
"""

import functools
import http.server
import os
import ssl
import sys


class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        sys.stderr.write("jwks-server %s\n" % (format % args))
        sys.stderr.flush()

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")
        super().end_headers()


def main():
    root, cert, key, portfile = sys.argv[1:5]
    handler = functools.partial(Handler, directory=root)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    tmp = portfile + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % server.server_address[1])
    os.replace(tmp, portfile)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
