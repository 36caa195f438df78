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
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tracer.errors import HoptraceError, UsageError
from tracer.event import SCHEMA_VERSION, Event, event_from_json


def _write_all(fp: IO[bytes], data: bytes) -> None:
    """``fp.write(data)`` until every byte is written. A binary file's write is documented to
    write all or raise, but once polars is imported (its SIGINT handler, pola-rs/polars#20961),
    a SIGINT that lands while a write to a full pipe blocks makes ``BufferedWriter.write``
    return the short count: ``--format json | reader`` lost the rest of a batch when stopped."""
    view = memoryview(data)
    while view:
        view = view[fp.write(view) or 0:]


class TraceWriter:
    """Writes a trace stream to ``fp``. With ``background``, the writes happen in a thread of
    their own, in order, so that a stall in the file system (dirty-page throttling blocks a
    writer for tens of ms at 100+ MB/s) never stops the tracer from draining the ring buffer;
    at most ``QUEUE`` batches wait. :meth:`close` writes what is queued and raises the
    writer's error, if it had one.

    ``fp`` is a binary file: events come as bytes from :meth:`tracer.event.Namer.ndjson`, and
    a text file would cost ~1 us per event more (TextIOWrapper re-encodes and re-chunks every
    batch; measured in benchmarks/trace_pipeline.py's notes in docs/benchmarks.md)."""

    QUEUE = 8

    def __init__(self, fp: IO[bytes], background: bool = False) -> None:
        self.fp = fp
        self._q: queue.Queue[bytes | None] | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._q = queue.Queue(self.QUEUE)
            self._thread = threading.Thread(target=self._drain, name="trace-writer", daemon=True)
            self._thread.start()

    def _drain(self) -> None:
        assert self._q is not None
        while (data := self._q.get()) is not None:
            if self._error is None:
                try:
                    _write_all(self.fp, data)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller by close()
                    self._error = exc
        try:
            self.fp.flush()
        except BaseException as exc:  # noqa: BLE001
            self._error = self._error or exc

    def _put(self, data: bytes) -> None:
        if self._q is None:
            _write_all(self.fp, data)
        elif self._error is not None:
            err, self._error = self._error, None
            self._raise(err)
        else:
            self._q.put(data)

    def _write(self, obj: dict[str, Any]) -> None:
        self._put(json.dumps(obj, separators=(",", ":")).encode() + b"\n")

    def header(self, **fields: Any) -> None:
        self._write({"type": "header", "schema": SCHEMA_VERSION, **fields})

    def event_lines(self, lines: bytes) -> None:
        """Event lines as made by :meth:`tracer.event.Namer.ndjson` (one batch)."""
        self._put(lines)

    def lost(self, probe: str, count: int) -> None:
        self._write({"type": "lost", "probe": probe, "count": count})

    def summary(self, **fields: Any) -> None:
        self._write({"type": "summary", **fields})
        self.close()

    def close(self) -> None:
        """Everything queued written and flushed (idempotent)."""
        if self._thread is not None:
            assert self._q is not None
            self._q.put(None)
            self._thread.join()
            self._thread = None
        elif self._q is None:  # a background writer flushed in its thread, once
            self.fp.flush()
        if self._error is not None:
            err, self._error = self._error, None
            self._raise(err)

    def _raise(self, err: BaseException) -> None:
        if isinstance(err, OSError) and not isinstance(err, BrokenPipeError):
            name = getattr(self.fp, "name", "the trace file")
            raise HoptraceError(f"cannot write {name}: {err.strerror or err}") from err
        raise err


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
