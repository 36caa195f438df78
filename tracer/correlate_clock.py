"""Clock offsets between nodes, from the causal order of matched packets.

Each node stamps events with its own CLOCK_MONOTONIC. A packet that leaves node X (its last
path event there, local time ``tx``) and then arrives on node Y (its first event there, local
time ``rx``) says, for ``off`` = what to add to a node's clock to get the reference time::

    rx + off[Y] >= tx + off[X]        so   off[Y] - off[X] >= tx - rx

Packets from X to Y give lower bounds of ``d = off[Y] - off[X]``, packets from Y to X upper
bounds. The interval ``[lo, hi]`` (tightest bounds) holds the true offset; the estimate is its
middle and the uncertainty its half-width (NTP's symmetric-delay assumption). With packets in
one direction only, the interval is open on one side: the estimate is the bound, the
uncertainty unknown (``None``). With no matched packet at all, the trace headers' wall clocks
(``started_unix_ns - started_mono_ns``) give an estimate of unknown quality.

More than two nodes: offsets are propagated from the reference node (the first file's) along
a breadth-first tree of node pairs that share packets; uncertainties add up along the path.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True, slots=True)
class ClockOffset:
    """How node ``node``'s clock maps onto ``reference``'s: ``global = local + offset_ns``."""

    node: str
    reference: str
    offset_ns: int
    lo_ns: int | None  # offset_ns lies in [lo_ns, hi_ns]; None: unbounded on that side
    hi_ns: int | None
    uncertainty_ns: int | None  # half-width of [lo, hi]; None when unbounded
    samples: int  # matched packets that constrained it
    method: str  # reference | causal | one-way | wall-clock | none
    consistent: bool = True  # False when the bounds crossed (lo > hi): clocks drift or mismatch

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _pair_bounds(links: pd.DataFrame) -> dict[tuple[str, str], tuple[int, int]]:
    """(X, Y) -> (max(tx - rx), count) over packets that went from X to Y."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    if links.empty:
        return out
    diff = links["tx_ns"].to_numpy(np.int64) - links["rx_ns"].to_numpy(np.int64)
    g = pd.DataFrame({"x": links["from_node"].astype(str), "y": links["to_node"].astype(str),
                      "d": diff}).groupby(["x", "y"], sort=False)["d"].agg(["max", "size"])
    for (x, y), row in g.iterrows():
        out[(x, y)] = (int(row["max"]), int(row["size"]))
    return out


def estimate(nodes: list[str], links: pd.DataFrame,
             wall: dict[str, int] | None = None) -> dict[str, ClockOffset]:
    """Offsets of every node relative to ``nodes[0]``.

    ``links``: one row per packet that crossed from one node to another, with columns
    ``from_node``, ``to_node``, ``tx_ns`` (last path event on the sender, sender's clock) and
    ``rx_ns`` (first event on the receiver, receiver's clock). ``wall``: node -> its header's
    ``started_unix_ns - started_mono_ns``, the fallback for nodes no packet connects.
    """
    if not nodes:
        return {}
    ref = nodes[0]
    bounds = _pair_bounds(links)
    out = {ref: ClockOffset(ref, ref, 0, 0, 0, 0, 0, "reference")}
    queue = deque([ref])
    while queue:
        x = queue.popleft()
        base = out[x]
        for y in nodes:
            if y in out:
                continue
            lo = bounds.get((x, y))  # X -> Y packets: d >= lo
            rv = bounds.get((y, x))  # Y -> X packets: d <= -max(tx_y - rx_x)
            if lo is None and rv is None:
                continue
            lo_d = lo[0] if lo else None
            hi_d = -rv[0] if rv else None
            n = (lo[1] if lo else 0) + (rv[1] if rv else 0)
            if lo_d is not None and hi_d is not None:
                est, unc, method = (lo_d + hi_d) // 2, abs(hi_d - lo_d) // 2, "causal"
            else:
                est = lo_d if lo_d is not None else hi_d  # type: ignore[assignment]
                unc, method = None, "one-way"
            assert est is not None
            bu = base.uncertainty_ns
            total_unc = None if unc is None or bu is None else unc + bu
            out[y] = ClockOffset(
                y,
                ref,
                base.offset_ns + est,
                None if lo_d is None or base.lo_ns is None else base.lo_ns + lo_d,
                None if hi_d is None or base.hi_ns is None else base.hi_ns + hi_d,
                total_unc,
                n,
                method,
                consistent=lo_d is None or hi_d is None or lo_d <= hi_d,
            )
            queue.append(y)
    for y in nodes:
        if y in out:
            continue
        if wall and y in wall and ref in wall:
            out[y] = ClockOffset(y, ref, wall[y] - wall[ref], None, None, None, 0, "wall-clock")
        else:
            out[y] = ClockOffset(y, ref, 0, None, None, None, 0, "none")
    return out
