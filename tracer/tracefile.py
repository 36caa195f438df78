"""Trace files: JSON lines, self-describing (docs/event-schema.md).

    {"type": "header", "schema": 1, "node": ..., "kernel": ..., "clock": "CLOCK_MONOTONIC", ...}
    {"type": "event", ...}            one per event (tracer/event.py)
    {"type": "lost", "probe": "netif_receive_skb", "count": 12}   cumulative, when it grows
    {"type": "summary", "events": ..., "packets": ..., "lost": {...}, "duration_s": ...}

The same stream goes to stdout with ``--format json``. :func:`read_trace` reads a file back for
replay (report, annotate, TUI, tests): everything above the event source works without root.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tracer.errors import UsageError
from tracer.event import SCHEMA_VERSION, Event, event_from_json


class TraceWriter:
    def __init__(self, fp: IO[str]) -> None:
        self.fp = fp

    def _write(self, obj: dict[str, Any]) -> None:
        self.fp.write(json.dumps(obj, separators=(",", ":")) + "\n")

    def header(self, **fields: Any) -> None:
        self._write({"type": "header", "schema": SCHEMA_VERSION, **fields})

    def event_lines(self, lines: str) -> None:
        """Event lines as made by :meth:`tracer.event.Namer.ndjson` (one batch)."""
        self.fp.write(lines)

    def lost(self, probe: str, count: int) -> None:
        self._write({"type": "lost", "probe": probe, "count": count})

    def summary(self, **fields: Any) -> None:
        self._write({"type": "summary", **fields})
        self.fp.flush()


@dataclass
class Trace:
    header: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    lost: dict[str, int] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    try:
        fp = path.open()
    except OSError as exc:
        raise UsageError(f"cannot read trace file {path}: {exc.strerror}") from exc
    with fp:
        for n, line in enumerate(fp, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path}:{n}: not a hoptrace trace line ({exc.msg})") from exc


def read_trace(path: Path) -> Trace:
    records = iter_records(path)
    first = next(records, None)
    if not first or first.get("type") != "header":
        raise UsageError(f"{path}: not a hoptrace trace file (no header line)")
    if first.get("schema", 0) > SCHEMA_VERSION:
        raise UsageError(f"{path}: schema {first['schema']} is newer than this hoptrace reads")
    trace = Trace(first)
    for rec in records:
        kind = rec.get("type")
        if kind == "event":
            trace.events.append(event_from_json(rec))
        elif kind == "lost":
            trace.lost[rec["probe"]] = int(rec["count"])
        elif kind == "summary":
            trace.summary = rec
    return trace
