"""tcpdump filter expressions compiled to the kernel's DNF table (``struct ht_filter``).

The kernel (probes/hoptrace.h) evaluates an OR of at most ``HT_FILTER_MAX_TERMS`` terms, each an
AND of at most ``HT_FILTER_MAX_PREDS`` predicates ``((f[field] & mask) in [lo, hi]) != negate``
over a flow key taken from the innermost headers. This module parses the tcpdump/libpcap syntax
(``pcap-filter(7)``) by recursive descent, pushes negation down to the predicates (De Morgan),
distributes to a disjunctive normal form (one case of L3 and PORTS at a time), simplifies it, and
checks it against those limits.

Precedence is libpcap's, not C's: ``not`` binds tightest, ``and`` and ``or`` have *equal*
precedence and associate left to right (``a or b and c`` is ``(a or b) and c``).

Field names are the C enum member names (``"HT_F_SPORT"``); user space maps them to numbers with
the BPF object's BTF, so no enum value is written down here. docs/filters.md is the user's guide.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from tracer.errors import FilterError

# The two #defines of probes/hoptrace.h (#defines are not in BTF; tests/test_filter.py checks them).
MAX_TERMS = 32
MAX_PREDS = 12

_SADDR = tuple(f"HT_F_SADDR{i}" for i in range(4))
_DADDR = tuple(f"HT_F_DADDR{i}" for i in range(4))
# enum ht_field member names in declaration order (the order is for display only)
FIELDS = ("HT_F_L3", "HT_F_PROTO", "HT_F_PORTS", "HT_F_SPORT", "HT_F_DPORT", *_SADDR, *_DADDR)
FULL = 0xFFFFFFFF
_FIELD_MAX = dict(HT_F_L3=6, HT_F_PROTO=255, HT_F_PORTS=1, HT_F_SPORT=0xFFFF, HT_F_DPORT=0xFFFF)
_L3_VALUES = (0, 4, 6)  # HT_F_L3 never holds anything else: sets are canonicalised over these
_L3, _PORTS = ("HT_F_L3", FULL), ("HT_F_PORTS", FULL)
_MAX_WORK = 1024  # terms in an intermediate product before we give up


@dataclass(frozen=True, slots=True)
class Pred:
    """One ``struct ht_pred``: ``((fields[field] & mask) in [lo, hi]) != negate``."""

    field: str
    negate: bool
    mask: int
    lo: int
    hi: int

    def matches(self, fields: Mapping[str, int]) -> bool:
        """Evaluate the predicate as the kernel does; a missing field reads as 0."""
        return (self.lo <= (fields.get(self.field, 0) & self.mask) <= self.hi) != self.negate

    def __str__(self) -> str:
        name = self.field.removeprefix("HT_F_")
        addr = "ADDR" in name
        fmt = "0x{:08x}".format if addr else str
        lhs = f"{name} & 0x{self.mask:08x}" if self.mask != FULL else name
        if self.lo == self.hi:
            return f"{lhs} {'!=' if self.negate else '=='} {fmt(self.lo)}"
        return f"{lhs} {'not in' if self.negate else 'in'} {fmt(self.lo)}..{fmt(self.hi)}"


@dataclass(frozen=True, slots=True)
class CompiledFilter:
    """A filter in the kernel's form: ``terms`` is an OR of ANDs of predicates.

    ``match_all`` is set for an empty expression (the kernel then skips the table); otherwise
    an empty ``terms`` matches nothing and an empty term matches everything, as in the kernel.
    """

    expression: str
    match_all: bool
    terms: tuple[tuple[Pred, ...], ...]

    def matches(self, fields: Mapping[str, int]) -> bool:
        """The kernel's verdict for one flow key (see :func:`flow_fields`)."""
        if self.match_all:
            return True
        return any(all(p.matches(fields) for p in term) for term in self.terms)

    def describe(self) -> str:
        """A few lines showing the compiled table, for ``--debug``."""
        if self.match_all:
            return "filter: none, every packet matches"
        head = f"filter {self.expression!r}: {len(self.terms)} term(s), OR of ANDs"
        lines = [head] + [
            f"  {i}: " + (" and ".join(map(str, t)) if t else "true")
            for i, t in enumerate(self.terms, 1)
        ]
        return "\n".join(lines) if self.terms else head + "\n  (matches nothing)"


def flow_fields(
    l3: int,
    proto: int,
    src: str | None,
    dst: str | None,
    sport: int,
    dport: int,
    ports_valid: bool,
) -> dict[str, int]:
    """The flow key the kernel builds, from decoded values (addresses as strings).

    ``l3`` is 4, 6 or 0 (not IP; addresses and ports ignored). Ports are zeroed when not valid.
    """
    out = dict.fromkeys(FIELDS, 0)
    if l3 not in (4, 6):
        return out
    out |= {"HT_F_L3": l3, "HT_F_PROTO": proto, "HT_F_PORTS": int(bool(ports_valid))}
    if ports_valid:
        out |= {"HT_F_SPORT": sport, "HT_F_DPORT": dport}
    for names, text in ((_SADDR, src), (_DADDR, dst)):
        value = int(ipaddress.ip_address(text or ("::" if l3 == 6 else "0.0.0.0")))
        words = [value] if l3 == 4 else [(value >> (96 - 32 * i)) & FULL for i in range(4)]
        out |= dict(zip(names, words, strict=False))
    return out


# --- value sets: a predicate group is (field, mask) -> sorted disjoint ranges of f & mask -----

Ranges = tuple[tuple[int, int], ...]
Key = tuple[str, int]
Term = dict[Key, Ranges]


def _umax(key: Key) -> int:
    return min(_FIELD_MAX.get(key[0], FULL), key[1])


def _canon(key: Key, ranges: list[tuple[int, int]]) -> Ranges:
    """Sort, merge, clip to the field's universe; for L3 merge across impossible values."""
    top = _umax(key)
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        lo, hi = max(lo, 0), min(hi, top)
        if lo > hi:
            continue
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    if key[0] == "HT_F_L3":  # runs over (0, 4, 6): {4, 6} becomes 4..6, {0, 6} stays two
        member = [any(lo <= v <= hi for lo, hi in out) for v in _L3_VALUES]
        out = []
        for i, v in enumerate(_L3_VALUES):
            if member[i] and i and member[i - 1]:
                out[-1] = (out[-1][0], v)
            elif member[i]:
                out.append((v, v))
    return tuple(out)


def _complement(key: Key, r: Ranges) -> Ranges:
    edges = [(-1, -1), *r, (_umax(key) + 1, 0)]
    return _canon(key, [(a[1] + 1, b[0] - 1) for a, b in zip(edges, edges[1:], strict=False)])


def _intersect(key: Key, a: Ranges, b: Ranges) -> Ranges:
    return _canon(key, [(max(x, u), min(y, v)) for x, y in a for u, v in b])


def _subset(key: Key, a: Ranges, b: Ranges) -> bool:
    return _intersect(key, a, b) == a


def _contains(r: Ranges, value: int) -> bool:
    return any(lo <= value <= hi for lo, hi in r)


def _emit(key: Key, r: Ranges) -> list[Pred]:
    """The fewest predicates for one group: a hull minus gaps, or the complement negated."""
    field, mask = key
    hull = [] if r[0][0] == 0 and r[-1][1] == _umax(key) else [(False, r[0][0], r[-1][1])]
    gaps = [(True, a[1] + 1, b[0] - 1) for a, b in zip(r, r[1:], strict=False)]
    neg = [(True, lo, hi) for lo, hi in _complement(key, r)]
    # fewest predicates; on a tie prefer single values ("L3 != 4" over "L3 not in 1..5")
    best = min(hull + gaps, neg, key=lambda o: (len(o), -sum(lo == hi for _, lo, hi in o)))
    return [Pred(field, n, mask, lo, hi) for n, lo, hi in best]


# --- formulas, negation normal form, DNF ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Leaf:
    key: Key
    ranges: Ranges


@dataclass(frozen=True, slots=True)
class _Op:
    op: str  # "and" | "or" | "not"
    args: tuple[_Node, ...]


_Node = _Leaf | _Op


def _leaf(field: str, lo: int, hi: int | None = None, mask: int = FULL) -> _Leaf:
    key = (field, mask)
    return _Leaf(key, _canon(key, [(lo, lo if hi is None else hi)]))


def _and(*args: _Node) -> _Node:
    return _Op("and", args) if len(args) > 1 else args[0]


def _or(*args: _Node) -> _Node:
    return _Op("or", args) if len(args) > 1 else args[0]


# The kernel's L3 and PORTS take few values: (L3, PORTS) is one of these (PORTS == 1 means IP).
_CASES = ((0, 0), (4, 0), (4, 1), (6, 0), (6, 1))


def _cases_dnf(node: _Node) -> list[Term]:
    """The DNF of ``node``, built once per (L3, PORTS) case with those two fixed, then merged.

    ``not (host 10.0.0.1 or host 2001:db8::1)`` distributed directly gives 34 terms, half of
    them IPv4 conditions ANDed with IPv6 ones; split by L3 first it is 1 + 1 + 16.
    """
    terms: list[Term] = []
    for l3, ports in _CASES:
        fixed = {_L3: ((l3, l3),), _PORTS: ((ports, ports),)}
        for t in _dnf(node, False, {_L3: l3, _PORTS: ports}):
            if (checked := _ports_imply_ip(t | fixed)) is not None:
                terms.append(checked)
    return _simplify(terms)


def _dnf(node: _Node, neg: bool, env: Mapping[Key, int]) -> list[Term]:
    """DNF of ``node`` (negated when ``neg``): negation is pushed to the leaves on the way.

    A leaf on a field fixed in ``env`` is a constant: true (``[{}]``) or false (``[]``).
    """
    if isinstance(node, _Leaf):
        r = _complement(node.key, node.ranges) if neg else node.ranges
        if node.key in env:
            return [{}] if _contains(r, env[node.key]) else []
        return [] if not r else [{}] if r == ((0, _umax(node.key)),) else [{node.key: r}]
    if node.op == "not":
        return _dnf(node.args[0], not neg, env)
    parts = [_dnf(a, neg, env) for a in node.args]
    if (node.op == "or") != neg:
        return _simplify([t for p in parts for t in p])
    acc: list[Term] = [{}]
    for p in parts:
        if len(acc) * len(p) > _MAX_WORK:
            raise _TooComplex(len(acc) * len(p))
        acc = _simplify([m for a in acc for b in p if (m := _merge(a, b)) is not None])
    return acc


class _TooComplex(Exception):
    def __init__(self, terms: int) -> None:
        self.terms = terms


def _merge(a: Term, b: Term) -> Term | None:
    """AND of two terms, or None when contradictory."""
    out = dict(a)
    for key, r in b.items():
        if key in out:
            r = _intersect(key, out[key], r)
            if not r:
                return None
        out[key] = r
    # f & M1 == v fixes f & M2 for every M2 within M1: `host X and net N` keeps only the host
    for (field, m1), r in list(out.items()):
        if len(r) != 1 or r[0][0] != r[0][1] or (field, m1) not in out:
            continue
        for key2 in [k for k in out if k[0] == field and k[1] != m1 and k[1] & ~m1 == 0]:
            if not _contains(out.pop(key2), r[0][0] & key2[1]):
                return None
    return _ports_imply_ip(out)


def _ports_imply_ip(t: Term) -> Term | None:
    """Ports are only valid for TCP/UDP/SCTP over IPv4/IPv6: PORTS == 1 implies L3 is 4 or 6."""
    t = dict(t)
    if t.get(_L3) == ((0, 0),) and _PORTS in t:
        return t if _contains(t.pop(_PORTS), 0) else None
    if t.get(_PORTS) == ((1, 1),) and _L3 in t:
        r = _intersect(_L3, t.pop(_L3), ((4, 6),))
        if not r:
            return None
        if r != ((4, 6),):
            t[_L3] = r
    return t


def _implies(b: Term, a: Term) -> bool:
    """True when term ``b`` implies term ``a`` (b is the narrower)."""
    if b.get(_PORTS) == ((1, 1),) and _L3 not in b:
        b = b | {_L3: ((4, 6),)}  # see _ports_imply_ip
    if b.get(_L3) == ((0, 0),) and _PORTS not in b:
        b = b | {_PORTS: ((0, 0),)}
    for key, ra in a.items():
        if key in b and _subset(key, b[key], ra):
            continue
        fixed = [
            r[0][0]
            for (f, m), r in b.items()
            if f == key[0] and key[1] & ~m == 0 and len(r) == 1 and r[0][0] == r[0][1]
        ]
        if not any(_contains(ra, v & key[1]) for v in fixed):
            return False
    return True


def _simplify(terms: list[Term]) -> list[Term]:
    """Drop implied terms and merge terms that differ in one group, until nothing changes."""
    while True:
        kept: list[Term] = []
        for t in terms:
            if any(_implies(t, k) for k in kept):
                continue
            kept = [k for k in kept if not _implies(k, t)] + [t]
        merged = _merge_one(kept)
        if merged is None:
            merged = _widen(kept)
            if merged == kept:
                return kept
        terms = merged


def _widen(terms: list[Term]) -> list[Term]:
    """``k in S or (k in T and X)`` is ``k in S or X`` when S and T cover everything."""
    out = list(terms)
    for single in [t for t in terms if len(t) == 1]:
        ((key, r),) = single.items()
        for i, t in enumerate(out):
            if len(t) > 1 and key in t and _canon(key, list(t[key] + r)) == _full(key):
                out[i] = {k: v for k, v in t.items() if k != key}
    return out


def _full(key: Key) -> Ranges:
    return _canon(key, [(0, FULL)])


def _merge_one(terms: list[Term]) -> list[Term] | None:
    for i, a in enumerate(terms):
        for j in range(i + 1, len(terms)):
            b = terms[j]
            diff = [k for k in a if a[k] != b.get(k)]
            if a.keys() != b.keys() or len(diff) != 1:
                continue
            key = diff[0]
            u = _canon(key, list(a[key] + b[key]))
            new = {k: v for k, v in a.items() if k != key}
            if u != _full(key):
                new[key] = u
            checked = _ports_imply_ip(new)  # never None: a union of satisfiable terms
            new = new if checked is None else checked
            return terms[:i] + [new] + terms[i + 1 : j] + terms[j + 1 :]
    return None


# --- the parser ----------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(&&|\|\||!=|[()!/\[\]])|([<>=&|+\-*%^]+)|([\w.:\\-]+)|(\S))")
_AND, _OR, _NOT = {"and", "&&"}, {"or", "||"}, {"not", "!"}
_PROTO_NAMES = {
    "icmp": 1,
    "igmp": 2,
    "tcp": 6,
    "udp": 17,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "icmp6": 58,
    "ospf": 89,
    "pim": 103,
    "vrrp": 112,
    "sctp": 132,
}
# protocol abbreviations: name -> (L3 or None for both, IP protocol or None for any)
_ABBREV = {
    "ip": (4, None),
    "ip6": (6, None),
    "tcp": (None, 6),
    "udp": (None, 17),
    "sctp": (None, 132),
    "icmp": (4, 1),
    "icmp6": (6, 58),
    "igmp": (4, 2),
    "pim": (None, 103),
    "vrrp": (4, 112),
    "ah": (None, 51),
    "esp": (None, 50),
}
_QUALS = {"src", "dst", "host", "net", "port", "portrange", "proto", "mask"}
_UNSUPPORTED = set(
    """
    ether arp rarp vlan mpls greater less len gateway broadcast multicast inbound outbound
    ifname on protochain pppoed pppoes geneve llc link fddi tr wlan type subtype dir decnet
    atalk iso stp ipx netbeui carp igrp ppp slip radio rnr reason action rset ruleset srnr
    subrulenum aarp lat sca moprc mopdl ra ta addr1 addr2 addr3 addr4 bpf atm lane
    """.split()
)
_KEYWORDS = _AND | _OR | _NOT | _QUALS | set(_ABBREV) | _UNSUPPORTED
_NOPE = "not supported by hoptrace's kernel filter"


@dataclass(frozen=True, slots=True)
class _Tok:
    text: str
    kind: str  # "punct" | "op" | "word" | "bad" | "end"
    col: int


@dataclass(frozen=True, slots=True)
class _Qual:
    proto: str | None  # ip, ip6, tcp, udp, sctp
    dir: str  # "", "src", "dst", "or", "and"
    kind: str | None  # host, net, port, portrange, proto; None = by the value
    word: str  # the last qualifier word, for messages


def _lex(expr: str) -> list[_Tok]:
    out: list[_Tok] = []
    for m in _TOKEN.finditer(expr):
        g = m.lastindex or 4
        out.append(_Tok(m.group(g), ("punct", "op", "word", "bad")[g - 1], m.start(g) + 1))
    return out + [_Tok("", "end", len(expr) + 1)]


class _Parser:
    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.toks = _lex(expr)
        self.i = 0
        self.qual: _Qual | None = None  # what a bare value after and/or repeats

    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def peek(self, n: int = 1) -> _Tok:
        return self.toks[min(self.i + n, len(self.toks) - 1)]

    def next(self) -> _Tok:
        tok = self.tok
        self.i = min(self.i + 1, len(self.toks) - 1)
        return tok

    def expect(self, text: str) -> None:
        if self.tok.text != text:
            raise self.unexpected(f", expected '{text}'")
        self.next()

    def error(self, msg: str, tok: _Tok | None = None) -> FilterError:
        tok = tok or self.tok
        return FilterError(f"filter: {msg} at column {tok.col}: {self.expr!r}")

    def unexpected(self, what: str = "") -> FilterError:
        tok = self.tok
        if tok.kind == "end":
            return self.error(f"unexpected end of the expression{what}")
        if tok.kind == "op" or tok.text in ("!=", "[", "]", "/"):
            return self.error(f"comparisons, arithmetic and packet data ('{tok.text}') are {_NOPE}")
        if tok.text in _UNSUPPORTED:
            return self.error(f"'{tok.text}' is {_NOPE}")
        return self.error(f"unexpected '{tok.text}'{what}")

    def parse(self) -> _Node:
        node = self.expression()
        if self.tok.kind != "end":
            raise self.unexpected(", expected 'and', 'or' or the end")
        return node

    def expression(self) -> _Node:
        node = self.term()
        while self.tok.text in _AND | _OR:
            op = _and if self.next().text in _AND else _or
            node = op(node, self.bare() if self.bare_ahead() else self.term())
        return node

    def term(self) -> _Node:
        if self.tok.text in _NOT:
            self.next()
            return _Op("not", (self.term(),))
        if self.tok.text == "(":
            self.next()
            node = self.expression()
            self.expect(")")
            self.qual = None
            return node
        tok = self.tok
        if tok.kind == "word" and tok.text in _ABBREV:
            if self.peek().text == "[":
                raise self.error(f"packet data accessors like '{tok.text}[...]' are {_NOPE}")
            if self.peek().text not in _QUALS:
                self.next()
                self.qual = None
                l3, proto = _ABBREV[tok.text]
                return _proto_node(l3, proto)
        if tok.kind == "word" and (tok.text in _QUALS or tok.text in _ABBREV):
            return self.value(self.head())
        if tok.kind == "word" and tok.text not in _KEYWORDS:
            raise self.error(f"'{tok.text}' needs a qualifier such as 'host', 'net' or 'port'")
        raise self.unexpected()

    def head(self) -> _Qual:
        """pqual? dqual? aqual? — e.g. ``tcp src port``, ``ip6 net``, ``src or dst``."""
        proto = self.next().text if self.tok.text in _ABBREV else None
        if proto is not None and proto not in ("ip", "ip6", "tcp", "udp", "sctp"):
            raise self.error(f"'{proto}' cannot qualify '{self.tok.text}'")
        direction, word = "", proto or ""
        if self.tok.text in ("src", "dst"):
            word = direction = self.next().text
            if self.tok.text in _AND | _OR and self.peek().text in ("src", "dst"):
                if self.peek().text == direction:
                    self.next()
                    raise self.unexpected()
                direction = "and" if self.next().text in _AND else "or"
                word = f"{word} {direction} {self.next().text}"
        kind = None
        if self.tok.text in ("host", "net", "port", "portrange", "proto"):
            kind = word = self.next().text
        if kind == "proto" and (direction or proto not in (None, "ip", "ip6")):
            raise self.error("'proto' takes only an 'ip' or 'ip6' qualifier", self.toks[self.i - 1])
        if kind in ("port", "portrange") and proto in ("ip", "ip6"):
            raise self.error(f"'{proto}' cannot qualify '{kind}'; use tcp, udp or sctp")
        if kind in (None, "host", "net") and proto in ("tcp", "udp", "sctp"):
            raise self.error(f"'{proto}' cannot qualify a host or net")
        if not word:
            raise self.unexpected()
        return _Qual(proto, direction, kind, word)

    def bare_ahead(self) -> bool:
        j = self.i
        while self.toks[j].text in _NOT | {"("}:
            j += 1
        return self.toks[j].kind == "word" and self.toks[j].text not in _KEYWORDS

    def bare(self) -> _Node:
        """A value after and/or that repeats the last qualifier: ``port 80 or 443``."""
        if self.qual is None:
            word = next(t for t in self.toks[self.i :] if t.kind == "word")
            raise self.error(
                f"'{word.text}' needs a qualifier such as 'host', 'net' or 'port'"
                " (there is none to repeat)",
                word,
            )
        qual = self.qual
        if self.tok.text in _NOT:
            self.next()
            return _Op("not", (self.bare(),))
        if self.tok.text == "(":
            self.next()
            node = self.bare()
            while self.tok.text in _AND | _OR:
                op = _and if self.next().text in _AND else _or
                self.qual = qual
                node = op(node, self.bare())
            self.expect(")")
            return node
        return self.value(qual)

    def value(self, q: _Qual) -> _Node:
        tok = self.tok
        if tok.kind != "word" or tok.text in _KEYWORDS:
            raise self.unexpected(f" after '{q.word}'")
        self.next()
        self.qual = q
        text = tok.text.lstrip("\\")
        if q.kind in ("port", "portrange"):
            return self.ports(q, text, tok)
        if q.kind == "proto":
            number = _PROTO_NAMES.get(text, _int(text))
            if number is None or number > 255:
                raise self.error("expected a protocol number or name after 'proto'", tok)
            return _proto_node({"ip": 4, "ip6": 6}.get(q.proto or ""), number)
        return self.address(q, text, tok)

    def ports(self, q: _Qual, text: str, tok: _Tok) -> _Node:
        parts = text.split("-") if q.kind == "portrange" else [text]
        found = [n for n in (_port(p) for p in parts) if n is not None]
        if len(parts) > 2 or len(found) != len(parts):
            what = "a port range A-B" if q.kind == "portrange" else "a port number"
            raise self.error(f"expected {what} after '{q.word}'", tok)
        numbers = sorted(n for n, _ in found)
        lo, hi = numbers[0], numbers[-1]
        # like libpcap, a name known only as tcp (http) or only as udp restricts the protocol
        protos = {p for _, p in found if p} | ({q.proto} if q.proto else set())
        if len(protos) > 1:
            raise self.error(f"'{text}' is not a {q.proto or 'tcp and udp'} service", tok)
        preds = [_leaf("HT_F_PORTS", 1)]
        if protos:
            preds.append(_leaf("HT_F_PROTO", _PROTO_NAMES[protos.pop()]))
        src, dst = _leaf("HT_F_SPORT", lo, hi), _leaf("HT_F_DPORT", lo, hi)
        return _and(*preds, _direction(q.dir, src, dst))

    def address(self, q: _Qual, text: str, tok: _Tok) -> _Node:
        after = f" after '{q.word}'"
        if q.kind == "net":
            octets = text.split(".")
            if 1 <= len(octets) < 4 and all(_int(o) is not None for o in octets):
                text, prefix = ".".join(octets + ["0"] * (4 - len(octets))), 8 * len(octets)
            else:
                prefix = None
        elif "/" == self.tok.text or "mask" == self.tok.text:
            raise self.error(f"'/' and 'mask' apply to 'net', not '{q.word}'", self.tok)
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            if re.fullmatch(r"[A-Za-z][\w.-]*", text) and _int(text) is None:
                raise self.error(
                    f"host names are not resolved: give an IP address, not '{text}'", tok
                ) from None
            raise self.error(f"expected an IPv4 or IPv6 address{after}", tok) from None
        bits = addr.max_prefixlen
        mask = (1 << bits) - 1
        if q.kind == "net":
            if self.tok.text == "/":
                self.next()
                n = _int(self.tok.text)
                if n is None or n > bits:
                    raise self.error(f"expected a prefix length 0-{bits} after '/'")
                self.next()
                mask = ((1 << bits) - 1) ^ ((1 << (bits - n)) - 1)
            elif self.tok.text == "mask":
                self.next()
                try:
                    m = ipaddress.ip_address(self.tok.text)
                except ValueError:
                    raise self.error("expected a dotted IPv4 netmask after 'mask'") from None
                if addr.version != 4 or m.version != 4:
                    raise self.error("'mask' works only with IPv4; use a /prefix for IPv6")
                mask = int(m)
                self.next()
            elif prefix is not None:
                mask = ((1 << 32) - 1) ^ ((1 << (32 - prefix)) - 1)
            if int(addr) & ~mask:
                raise self.error(f"'{addr}' has bits set outside its netmask", tok)
        pq = {"ip": 4, "ip6": 6}.get(q.proto or "")
        if pq is not None and pq != addr.version:
            raise self.error(f"'{q.proto}' cannot qualify the IPv{addr.version} address", tok)
        return _and(_leaf("HT_F_L3", addr.version), _address(q.dir, addr.version, int(addr), mask))


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _port(text: str) -> tuple[int, str | None] | None:
    """A port number, or a service name with the one protocol it is known for (None: both)."""
    if text.isdigit():
        return (int(text), None) if int(text) <= 0xFFFF else None
    found = {}
    for proto in ("tcp", "udp"):
        try:
            found[proto] = socket.getservbyname(text, proto)
        except OSError:
            continue
    if len(set(found.values())) != 1:
        return None  # unknown, or a different number for tcp and udp
    ((proto, number),) = list(found.items())[:1]
    return number, (proto if len(found) == 1 else None)


def _proto_node(l3: int | None, proto: int | None) -> _Node:
    ip = _leaf("HT_F_L3", 4, 6) if l3 is None else _leaf("HT_F_L3", l3)
    return ip if proto is None else _and(ip, _leaf("HT_F_PROTO", proto))


def _direction(d: str, src: _Node, dst: _Node) -> _Node:
    return {"src": src, "dst": dst, "and": _and(src, dst)}.get(d, _or(src, dst))


def _address(d: str, version: int, value: int, mask: int) -> _Node:
    """Per-word predicates for one address/mask; words with a zero mask are left out."""
    n = 1 if version == 4 else 4
    words = [
        ((value >> (32 * (n - 1 - i))) & FULL, (mask >> (32 * (n - 1 - i))) & FULL)
        for i in range(n)
    ]
    sides = []
    for names in (_SADDR, _DADDR):
        preds = [_leaf(names[i], v, mask=m) for i, (v, m) in enumerate(words) if m]
        sides.append(_and(*preds) if preds else _leaf("HT_F_L3", 0, 6))
    return _direction(d, sides[0], sides[1])


def compile_filter(expr: str) -> CompiledFilter:
    """Compile a tcpdump-style expression; raises FilterError (message names the column)."""
    if not expr.strip():
        return CompiledFilter(expr, True, ())
    try:
        dnf = _cases_dnf(_Parser(expr).parse())
    except _TooComplex as exc:
        raise FilterError(
            f"filter: too complex: more than {exc.terms} terms before "
            f"simplification, at most {MAX_TERMS}: {expr!r}"
        ) from None
    order = {name: i for i, name in enumerate(FIELDS)}
    terms = tuple(
        tuple(p for key in sorted(t, key=lambda k: (order[k[0]], k[1])) for p in _emit(key, t[key]))
        for t in dnf
    )
    if len(terms) > MAX_TERMS:
        raise FilterError(f"filter: too complex: {len(terms)} terms, at most {MAX_TERMS}: {expr!r}")
    if (widest := max((len(t) for t in terms), default=0)) > MAX_PREDS:
        raise FilterError(
            f"filter: too complex: a term needs {widest} conditions, at most {MAX_PREDS}: {expr!r}"
        )
    return CompiledFilter(expr, False, terms)
