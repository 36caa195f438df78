"""The ring buffer read in bulk from its mapped pages (tracer/ringbuf.py), in the real kernel:
a 64 KiB ring (240 records) wraps many times under a bounded ping run; nothing may be
duplicated, reordered within a CPU, or missed."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from decoders import START_ETH, decode
from tests.tracing import require_kernel
from tracer.lab import Lab

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(90)]

RING = 1 << 16
PINGS = 150


def test_ring_wraps_without_loss_or_duplicates(vxlan_lab: Lab) -> None:
    require_kernel()
    from tracer.filter import compile_filter
    from tracer.loader import ProbeOptions, Probes
    from tracer.names import resolve

    lab = vxlan_lab
    b1 = lab.addr("b1")
    opts = ProbeOptions(filter=compile_filter(f"icmp and host {b1}"),
                        netns=resolve(",".join(lab.namespaces())), netns_all=False,
                        ring_bytes=RING)
    batches = []
    with Probes(opts) as probes:
        stride = 8 + (probes.event_dtype.itemsize + 7) // 8 * 8
        done = threading.Event()

        def traffic() -> None:
            try:
                lab.exec("a1", ["ping", "-q", "-c", str(PINGS), "-i", "0.01", "-W", "1", b1],
                         timeout=30)
            finally:
                done.set()

        th = threading.Thread(target=traffic)
        th.start()
        deadline = time.monotonic() + 40
        while not done.is_set() and time.monotonic() < deadline:
            batches.append(probes.read(5))
        th.join(timeout=35)
        time.sleep(0.2)
        batches.append(probes.drain())
        lost = probes.lost()
    recs = np.concatenate(batches)
    assert lost == {}, f"the reader fell behind a 64 KiB ring: {lost}"
    # the ring wrapped many times
    assert len(recs) * stride > 10 * RING, len(recs)
    # no record twice, and per CPU in time order (the ring is filled in commit order)
    keys = set(zip(recs["cpu"].tolist(), recs["ts_ns"].tolist(), recs["probe"].tolist(),
                   recs["skb"].tolist(), strict=True))
    assert len(keys) == len(recs)
    for cpu in np.unique(recs["cpu"]):
        ts = recs["ts_ns"][recs["cpu"] == cpu]
        assert (np.diff(ts.astype(np.int64)) >= 0).all()
    # every echo request reached b1's eth0: its sequence numbers, decoded from the records
    b1_ns = os.stat(f"/run/netns/{lab.netns('b1')}").st_ino
    seqs = set()
    for r in recs:
        if r["ifname"].split(b"\0")[0] != b"eth0" or r["netns"] != b1_ns:
            continue
        d = decode(bytes(r["hdr"][: r["hdr_len"]]), start=START_ETH)
        inner = d.inner
        if inner is not None and inner.proto == 1 and inner.dst == b1 and inner.icmp_type == 8:
            seqs.add(inner.icmp_seq)
    assert seqs == set(range(1, PINGS + 1)), sorted(set(range(1, PINGS + 1)) - seqs)[:10]
