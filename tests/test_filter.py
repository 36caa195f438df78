"""tracer/filter.py: parsing, errors, the DNF it produces, and the kernel's limits (pure tier)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracer import filter as flt
from tracer.errors import FilterError
from tracer.filter import CompiledFilter, Pred, compile_filter, flow_fields

HEADER = Path(__file__).resolve().parents[1] / "probes" / "hoptrace.h"


def shape(expr: str) -> list[set[str]]:
    """Each term as a set of its predicates' text, e.g. {'L3 == 4', 'SADDR0 == 0x01020304'}."""
    return [set(map(str, t)) for t in compile_filter(expr).terms]


def fields(**kw: object) -> dict[str, int]:
    base: dict[str, object] = dict(
        l3=4, proto=6, src="10.0.0.1", dst="10.0.0.2", sport=1234, dport=80, ports_valid=True
    )
    return flow_fields(**(base | kw))  # type: ignore[arg-type]


# --- the contract with probes/hoptrace.h ---------------------------------------------------


def test_field_names_and_limits_match_the_header() -> None:
    text = HEADER.read_text()
    enum = re.search(r"enum ht_field \{(.*?)\};", text, re.S)
    assert enum
    names = re.findall(r"\b(HT_F_\w+)\s*=", enum.group(1))
    assert list(flt.FIELDS) == [n for n in names if n != "HT_F_MAX"]
    assert f"HT_FILTER_MAX_TERMS {flt.MAX_TERMS}" in re.sub(r"#define\s+", "", text)
    assert f"HT_FILTER_MAX_PREDS {flt.MAX_PREDS}" in re.sub(r"#define\s+", "", text)


# --- shapes --------------------------------------------------------------------------------


def test_empty_expression_matches_all() -> None:
    f = compile_filter("  ")
    assert f.match_all and f.terms == () and f.matches({})
    assert "every packet" in f.describe()


def test_port_is_ports_valid_and_either_port() -> None:
    assert shape("port 80") == [{"PORTS == 1", "SPORT == 80"}, {"PORTS == 1", "DPORT == 80"}]
    assert compile_filter("port 80").terms[0][0] == Pred("HT_F_PORTS", False, 0xFFFFFFFF, 1, 1)


def test_host_v4_implies_ipv4() -> None:
    assert shape("host 1.2.3.4") == [
        {"L3 == 4", "SADDR0 == 0x01020304"},
        {"L3 == 4", "DADDR0 == 0x01020304"},
    ]
    assert shape("src and dst host 1.2.3.4") == [
        {"L3 == 4", "SADDR0 == 0x01020304", "DADDR0 == 0x01020304"}
    ]


def test_ipv6_host_and_net_expand_into_words() -> None:
    (term,) = shape("src host 2001:db8::1")
    assert term == {
        "L3 == 6",
        "SADDR0 == 0x20010db8",
        "SADDR1 == 0x00000000",
        "SADDR2 == 0x00000000",
        "SADDR3 == 0x00000001",
    }
    (term,) = shape("dst net 2001:db8:ff00::/40")
    assert term == {"L3 == 6", "DADDR0 == 0x20010db8", "DADDR1 & 0xff000000 == 0xff000000"}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("net 10.0.0.0/8", "SADDR0 & 0xff000000 == 0x0a000000"),
        ("net 10", "SADDR0 & 0xff000000 == 0x0a000000"),
        ("net 192.168", "SADDR0 & 0xffff0000 == 0xc0a80000"),
        ("net 10.0.0.0 mask 255.0.255.0", "SADDR0 & 0xff00ff00 == 0x0a000000"),
        ("portrange 1024-65535", "SPORT in 1024..65535"),
        ("portrange 90-80", "SPORT in 80..90"),
        ("not ip", "L3 != 4"),
        ("ip or ip6", "L3 != 0"),
        ("ip proto \\udp", "PROTO == 17"),
        ("ip6 proto 58", "L3 == 6"),
    ],
)
def test_predicate_text(expr: str, expected: str) -> None:
    assert expected in shape(expr)[0]


def test_precedence_is_libpcaps_and_or_equal_left_to_right() -> None:
    # libpcap: 'udp or tcp and port 80' == '(udp or tcp) and port 80'
    f = compile_filter("udp or tcp and port 80")
    assert not f.matches(fields(proto=17, sport=53, dport=53))
    assert f.matches(fields(proto=17, sport=53, dport=80))
    assert compile_filter("not udp and tcp").terms == compile_filter("(not udp) and tcp").terms
    assert compile_filter("! udp && tcp || icmp").terms == (
        compile_filter("((not udp) and tcp) or icmp").terms
    )


@pytest.mark.parametrize(
    ("short", "long"),
    [
        ("host 1.2.3.4 or 5.6.7.8", "host 1.2.3.4 or host 5.6.7.8"),
        ("port 80 or 443", "port 80 or port 443"),
        ("tcp dst port 80 or 443", "tcp dst port 80 or tcp dst port 443"),
        ("port 80 and not 53", "port 80 and not port 53"),
        (
            "host 1.1.1.1 and (2.2.2.2 or 3.3.3.3)",
            "host 1.1.1.1 and (host 2.2.2.2 or host 3.3.3.3)",
        ),
        ("not host 1.1.1.1 or 2.2.2.2", "(not host 1.1.1.1) or host 2.2.2.2"),
        ("ip proto 6 or 17", "ip proto 6 or ip proto 17"),
    ],
)
def test_qualifier_inheritance(short: str, long: str) -> None:
    assert compile_filter(short).terms == compile_filter(long).terms


def test_simplification() -> None:
    assert compile_filter("ip and ip6").terms == ()  # contradiction: matches nothing
    assert compile_filter("ip or not ip").terms == ((),)  # tautology: one empty term
    assert shape("port 80 or port 80") == shape("port 80")  # duplicates
    assert shape("tcp or tcp port 80") == shape("tcp")  # subsumed
    assert shape("net 10/8 and host 10.1.2.3") == shape("host 10.1.2.3")  # implied by a host
    assert compile_filter("src host 10.1.2.3 and src net 11/8").terms == ()
    assert shape("tcp port 22") == [  # PORTS == 1 already means IPv4 or IPv6
        {"PROTO == 6", "PORTS == 1", "SPORT == 22"},
        {"PROTO == 6", "PORTS == 1", "DPORT == 22"},
    ]


def test_negation_pushes_to_predicates() -> None:
    assert shape("not port 80") == [{"PORTS == 0"}, {"SPORT != 80", "DPORT != 80"}]
    assert shape("not (tcp or udp)") == [{"L3 == 0"}, {"PROTO != 6", "PROTO != 17"}]


def test_limits() -> None:
    assert len(compile_filter("not host 2001:db8::1").terms) == 17
    with pytest.raises(FilterError, match=r"too complex: .* at most 32"):
        compile_filter("not host 2001:db8::1 and not host 2001:db9::2")
    many = " or ".join(f"(host 10.0.0.{i} and port {i})" for i in range(1, 10))
    with pytest.raises(FilterError, match=r"too complex: 36 terms, at most 32"):
        compile_filter(many)
    wide = "src host 2001:db8::1 and dst host 2001:db8::2 and port 80"
    assert max(len(t) for t in compile_filter(wide).terms) == 11
    assert max(len(t) for t in compile_filter(wide + " and ip6 proto 6").terms) == 12
    with pytest.raises(FilterError, match=r"a term needs 13 conditions, at most 12"):
        compile_filter(wide + " and ip6 proto 6 and not dst port 81")


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("port http0", "expected a port number after 'port' at column 6: 'port http0'"),
        ("port 70000", "expected a port number after 'port' at column 6"),
        ("portrange 5-", "expected a port range A-B after 'portrange' at column 11"),
        (
            "tcp[13] & 2 != 0",
            "packet data accessors like 'tcp[...]' are not supported by "
            "hoptrace's kernel filter at column 1",
        ),
        ("ether host 00:11:22:33:44:55", "'ether' is not supported by hoptrace's kernel filter"),
        ("vlan and tcp", "'vlan' is not supported"),
        ("greater 100", "'greater' is not supported"),
        ("ip and len > 100", "'len' is not supported by hoptrace's kernel filter at column 8"),
        ("host foo.example", "host names are not resolved: give an IP address"),
        ("host 1.1", "expected an IPv4 or IPv6 address after 'host' at column 6"),
        ("src 80", "expected an IPv4 or IPv6 address after 'src' at column 5"),
        ("(host 1.2.3.4", "unexpected end of the expression, expected ')' at column 14"),
        ("host 1.2.3.4)", "unexpected ')', expected 'and', 'or' or the end at column 13"),
        ("1.2.3.4", "'1.2.3.4' needs a qualifier such as 'host', 'net' or 'port' at column 1"),
        ("tcp or 80", "'80' needs a qualifier such as 'host', 'net' or 'port' (there is none"),
        ("net 10.0.0.1/8", "'10.0.0.1' has bits set outside its netmask at column 5"),
        ("net 10.0.0.0/33", "expected a prefix length 0-32 after '/' at column 14"),
        ("host 10.0.0.0/8", "'/' and 'mask' apply to 'net', not 'host' at column 14"),
        ("net 2001:db8:: mask 255.0.0.0", "'mask' works only with IPv4"),
        ("ip6 host 1.2.3.4", "'ip6' cannot qualify the IPv4 address at column 10"),
        ("tcp host 1.2.3.4", "'tcp' cannot qualify a host or net"),
        ("ip port 80", "'ip' cannot qualify 'port'; use tcp, udp or sctp"),
        ("icmp host 1.2.3.4", "'icmp' cannot qualify 'host'"),
        ("ip proto 300", "expected a protocol number or name after 'proto' at column 10"),
        ("src port 80 and", "unexpected end of the expression at column 16"),
        ("ip && || tcp", "unexpected '||' at column 7"),
        ("host 1.2.3.4 @", "unexpected '@'"),
        ("src or src host 1.2.3.4", "unexpected 'src' at column 8"),
    ],
)
def test_errors_name_the_problem_and_column(expr: str, message: str) -> None:
    with pytest.raises(FilterError) as info:
        compile_filter(expr)
    assert str(info.value).startswith("filter: ")
    assert message in str(info.value)


# --- matches() and flow_fields() -----------------------------------------------------------


def test_flow_fields() -> None:
    f = flow_fields(6, 17, "2001:db8::1", "::ffff:1.2.3.4", 53, 5353, True)
    assert f["HT_F_SADDR0"] == 0x20010DB8 and f["HT_F_SADDR3"] == 1
    assert f["HT_F_DADDR2"] == 0xFFFF and f["HT_F_DADDR3"] == 0x01020304
    assert f["HT_F_PORTS"] == 1 and (f["HT_F_SPORT"], f["HT_F_DPORT"]) == (53, 5353)
    f = flow_fields(4, 6, "10.0.0.1", "10.0.0.2", 1, 2, False)
    assert (f["HT_F_PORTS"], f["HT_F_SPORT"], f["HT_F_DADDR1"]) == (0, 0, 0)
    assert flow_fields(0, 0, None, None, 0, 0, False) == dict.fromkeys(flt.FIELDS, 0)


def test_matches_and_describe() -> None:
    f = compile_filter("tcp port 80 and host 10.0.0.1")
    assert f.matches(fields()) and not f.matches(fields(proto=17))
    assert not f.matches(fields(ports_valid=False))  # a non-first fragment
    text = f.describe()
    assert "4 term(s)" in text and "PROTO == 6" in text and "SADDR0 == 0x0a000001" in text
    assert "matches nothing" in compile_filter("ip and not ip").describe()
    assert CompiledFilter("x", False, ()).matches({}) is False


# --- the DNF equals the formula it came from, for any flow key -----------------------------

EXPRESSIONS = [
    "not (host 10.0.0.1 or port 80) and (udp or net 10/8)",
    "tcp port 80 or 443 and not src net 10.0.0.0/24",
    "not (src host 2001:db8::1 and dst port 53)",
    "not (tcp and not (port 22 or portrange 100-200)) or icmp",
    "(ip6 or udp) and not (dst net 2001:db8::/48 or host 10.0.0.2)",
    "not (ip proto 6 or ip6 proto 17 or proto 1) and not net 10 mask 255.0.0.0",
]
V4 = ["10.0.0.1", "10.0.0.2", "10.0.0.9", "11.0.0.1"]
V6 = ["2001:db8::1", "2001:db8::2", "2001:db8:1::1", "fe80::1"]


def _eval(node: object, f: dict[str, int]) -> bool:
    if isinstance(node, flt._Leaf):
        return flt._contains(node.ranges, f[node.key[0]] & node.key[1])
    assert isinstance(node, flt._Op)
    results = [_eval(a, f) for a in node.args]
    return {"and": all, "or": any}.get(node.op, lambda r: not r[0])(results)


@settings(max_examples=400, deadline=None)
@given(
    l3=st.sampled_from([0, 4, 6]),
    proto=st.sampled_from([1, 6, 17, 58, 132]),
    addrs=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    ports=st.tuples(st.sampled_from([22, 53, 80, 150, 443]), st.sampled_from([22, 53, 80, 443])),
    ports_valid=st.booleans(),
)
def test_dnf_equals_formula(
    l3: int, proto: int, addrs: tuple[int, int], ports: tuple[int, int], ports_valid: bool
) -> None:
    pool = V6 if l3 == 6 else V4
    f = flow_fields(
        l3,
        proto,
        pool[addrs[0]],
        pool[addrs[1]],
        *ports,
        ports_valid and l3 != 0 and proto in (6, 17, 132),
    )
    for expr in EXPRESSIONS:
        assert compile_filter(expr).matches(f) == _eval(flt._Parser(expr).parse(), f), expr
