"""A tiny TCP server that answers every connection with its name: a lab's Service backend.

Run by the lab (:mod:`tracer.lab.procs`) inside a pod's namespace, standard library only::

    echod.py --netns htlab-a2 --pidfile F --lifetime S --port 8080 --text a2

Each connection gets ``TEXT\\n`` (as an HTTP/1.0 response when the request starts with
``GET``) and is closed; a client that sends nothing is answered after 0.5 s. One connection
at a time, each bounded in time. Exits when its namespace is deleted, on SIGTERM, or after
``--lifetime`` seconds.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tracer.lab import daemon_common
else:  # run as a file with python -I: the sibling module, not the tracer package
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import daemon_common


def main() -> int:
    p = daemon_common.parser(__doc__)
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--text", required=True)
    args = p.parse_args()
    srv = socket.create_server(("0.0.0.0", args.port), backlog=16)
    srv.settimeout(1.0)
    daemon_common.ready(args.pidfile)  # the lab's `up` waits for this
    end = time.monotonic() + args.lifetime
    while time.monotonic() < end:
        if daemon_common.netns_gone(args.netns):
            return 0
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            continue
        with conn:
            conn.settimeout(0.5)
            try:
                req = conn.recv(1024)
            except OSError:
                req = b""
            body = f"{args.text}\n".encode()
            if req.startswith(b"GET"):
                head = f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                body = head + body
            try:
                conn.sendall(body)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
