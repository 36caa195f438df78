"""decoders: result types, the fast constructors, the pcap reader and the port map data."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from decoders import DEFAULT_PORTS, START_ETH, START_IP, Flow, Tunnel, decode
from decoders.model import new_flow, new_tunnel
from decoders.pcap import LINKTYPE_RAW, PcapFile, write_pcap

ARGS = (4, "10.0.0.1", "10.0.0.2", 6, 1234, 80, 7, 0, False, 100, 200, 0x12, 0, 0, 0, 0, 33)


def test_fast_flow_is_a_real_frozen_flow() -> None:
    fast, slow = new_flow(*ARGS), Flow(*ARGS)
    assert type(fast) is Flow
    assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    assert dataclasses.astuple(fast) == ARGS
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.src = "x"  # type: ignore[misc]
    assert not hasattr(fast, "__dict__")


def test_fast_tunnel_is_a_real_frozen_tunnel() -> None:
    fast = new_tunnel("gre", None, "1.1.1.1", "2.2.2.2", 0, 0, 5, seq=9)
    assert type(fast) is Tunnel and fast == Tunnel("gre", None, "1.1.1.1", "2.2.2.2", 0, 0, 5,
                                                   seq=9)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.key = 1  # type: ignore[misc]


def test_flow_key_is_direction_independent_and_identity_ignores_addresses() -> None:
    a = Flow(*ARGS)
    b = dataclasses.replace(a, src=a.dst, dst=a.src, sport=a.dport, dport=a.sport)
    assert a.key() == b.key() == (6, "10.0.0.1", 1234, "10.0.0.2", 80)
    assert a.identity() == b.identity() == (6, 7, 0, 0, 0, 100, 200, 33)


def test_default_ports_are_the_documented_ones() -> None:
    assert dict(DEFAULT_PORTS) == {4789: "vxlan", 8472: "vxlan", 6784: "vxlan",
                                   6081: "geneve", 8285: "flannel-udp"}


def test_bad_start_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="START_ETH"):
        decode(b"", start=3)


def test_pcap_reader_matches_scapy_writer(tmp_path: Path) -> None:
    pkts = [Ether() / IP(src="1.2.3.4", dst="5.6.7.8", id=i) / UDP(sport=i + 1, dport=9)
            for i in range(5)]
    wrpcap(str(tmp_path / "a.pcap"), pkts)
    cap = PcapFile(tmp_path / "a.pcap")
    assert cap.start == START_ETH
    frames = [frame for _, frame in cap]
    assert frames == [bytes(p) for p in pkts]
    assert [decode(f).inner.sport for f in frames] == [1, 2, 3, 4, 5]  # type: ignore[union-attr]


def test_pcap_writer_raw_ip(tmp_path: Path) -> None:
    raw = [bytes(IP(src="1.2.3.4", dst="5.6.7.8") / UDP())]
    assert write_pcap(tmp_path / "r.pcap", raw, linktype=LINKTYPE_RAW) == 1
    cap = PcapFile(tmp_path / "r.pcap")
    assert cap.start == START_IP and [f for _, f in cap] == raw
    (tmp_path / "x.pcap").write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a classic pcap"):
        PcapFile(tmp_path / "x.pcap")


def test_benchmark_keeps_the_corpus_tables_in_sync() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import decode_bench
    import decode_corpus

    assert decode_bench.CORPORA == decode_corpus.CORPORA
    assert decode_bench.TSHARK_DECODE_AS == decode_corpus.TSHARK_DECODE_AS
