"""Known gaps of hoptrace on the kernels of the VM tier, as a pytest plugin the guest loads
(``-p tests.guest.known_gaps``, tools/kernel-guest.sh).

A test that fails on a kernel where a gap applies, *with that gap's error text*, is reported as
xfailed naming the gap; any other failure stays a failure. A gap that applies but was not seen
in any failure is reported at the end ("not seen"), so a fix shows up. Each gap
names what is missing; docs/kernels.md lists them, and the gaps fixed so far.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tracer.capabilities import choose
from tracer.catalogue import BY_NAME


@dataclass(frozen=True)
class Gap:
    name: str
    applies: Callable[[], bool]
    error: str  # text in the failure that identifies this gap
    reason: str


def _no_netfilter_hooks() -> bool:
    return choose(BY_NAME["nf_hook_first"]).chosen is None


GAPS = (
    Gap(
        "no-netfilter-hooks",
        _no_netfilter_hooks,
        "core probe nf_hook_first cannot be attached here",
        "no mechanism for the netfilter hooks on this kernel; `hoptrace trace` refuses",
    ),
)

_seen: set[str] = set()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome: Any = yield
    rep = outcome.get_result()
    if not rep.failed or rep.when not in ("setup", "call"):
        return
    text = str(rep.longrepr)
    for gap in GAPS:
        if gap.error in text and gap.applies():
            _seen.add(gap.name)
            rep.outcome = "skipped"
            rep.wasxfail = f"known gap {gap.name}: {gap.reason}"
            return


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for gap in GAPS:
        if gap.applies():
            state = (
                "seen"
                if gap.name in _seen
                else "not seen in any failure (fixed, or this kernel is not affected)"
            )
            terminalreporter.write_line(f"known gap {gap.name} applies here, {state}")
