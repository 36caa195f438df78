"""``make demo``: the built-in lab, traced. Brings up two-node-vxlan, traces a ping and a TCP
exchange from pod a1 (node n1) to pod b1 (node n2), prints their hop chains, takes the lab down.

All traffic stays inside the lab's namespaces; every loop is bounded.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tracer.lab import get_lab

PREFIX = "htdemo-"


def _trace(args: list[str], traffic: list[list[str]], lab_ns: str, tmp: Path) -> str:
    ready = tmp / "ready"
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tracer",
            "trace",
            *args,
            "--netns",
            lab_ns,
            "--ready-file",
            str(ready),
            "--duration",
            "20",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"demo: the tracer did not start: {proc.stderr.read()}")  # type: ignore[union-attr]
            time.sleep(0.02)
        for argv in traffic:
            subprocess.run(argv, timeout=20, check=False, capture_output=True)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    sys.stderr.write(err)
    return out


def main() -> int:
    lab = get_lab("two-node-vxlan", prefix=PREFIX)
    lab.down()  # leftovers of an interrupted demo
    print(lab.describe())
    with lab, tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ns = ",".join(lab.namespaces())
        a1, b1 = lab.netns("a1"), lab.netns("b1")
        dst = lab.addr("b1")
        print(f"\n== ping {lab.addr('a1')} -> {dst} (request and reply) ==\n")
        print(
            _trace(
                [f"host {dst} and icmp", "--count", "2"],
                [["ip", "netns", "exec", a1, "ping", "-c", "1", "-W", "2", dst]],
                ns,
                tmp,
            )
        )
        print(f"\n== TCP {lab.addr('a1')} -> {dst}:8080, first 3 packets (the handshake) ==\n")
        server = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                b1,
                "timeout",
                "15",
                sys.executable,
                "-c",
                "import socket; s=socket.create_server(('0.0.0.0', 8080)); c,_=s.accept(); "
                "c.sendall(c.recv(64)); c.close()",
            ]
        )
        try:
            time.sleep(0.3)
            client = [
                "ip",
                "netns",
                "exec",
                a1,
                "timeout",
                "10",
                sys.executable,
                "-c",
                f"import socket; c=socket.create_connection(('{dst}', 8080), 5); "
                "c.sendall(b'hello'); c.recv(64)",
            ]
            print(_trace(["tcp port 8080", "--count", "3"], [client], ns, tmp))
        finally:
            server.kill()
            server.wait()
    print(
        "lab two-node-vxlan is down again. Try it yourself:\n"
        "  hoptrace lab up two-node-vxlan\n"
        "  hoptrace trace 'host 10.244.2.2' --count 4 &\n"
        "  hoptrace lab exec two-node-vxlan a1 -- ping -c 2 10.244.2.2\n"
        "  hoptrace lab down two-node-vxlan"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
