"""decoders vs tshark: the same innermost flow for every packet tshark decodes, per corpus."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from decode_corpus import CORPORA, TSHARK_DECODE_AS, write_corpus  # noqa: E402
from decode_tshark import TSHARK, tshark_keys  # noqa: E402

from decoders import decode  # noqa: E402
from decoders.pcap import PcapFile  # noqa: E402

pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (apt-get "
                                "install tshark)")


@pytest.mark.parametrize("corpus", CORPORA)
def test_same_inner_flows_as_tshark(corpus: str, tmp_path: Path) -> None:
    pcap = tmp_path / f"{corpus}.pcap"
    n = write_corpus(corpus, pcap, 600, pool_size=600)
    theirs = tshark_keys(pcap, TSHARK_DECODE_AS.get(corpus, ()))
    ours = [decode(frame) for _, frame in PcapFile(pcap)]
    assert len(theirs) == len(ours) == n
    mismatches = []
    both: Counter[object] = Counter()
    for i, (d, key) in enumerate(zip(ours, theirs, strict=True)):
        if key is None or d.error is not None:
            continue
        assert d.inner is not None, f"packet {i + 1}: tshark decodes {key}, we found no flow"
        if d.inner.key() != key:
            mismatches.append((i + 1, d.inner.key(), key))
        both[key] += 1
    assert mismatches == []
    decoded_by_tshark = sum(k is not None for k in theirs)
    agreed = sum(both.values())
    # what one side rejects (bogus IP version or IHL, headers cut short), the other does too
    rejected = [i + 1 for i, (d, key) in enumerate(zip(ours, theirs, strict=True))
                if (key is None) != (d.error is not None)]
    assert rejected == []
    assert agreed == decoded_by_tshark
    if corpus != "mix":
        assert agreed == n
