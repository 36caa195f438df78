"""A lab: one topology under one namespace prefix, with up/down/exec.

::

    with get_lab("two-node-vxlan", prefix="htlab-") as lab:
        lab.exec("a1", ["ping", "-c", "1", lab.addr("b1")], timeout=5)
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from tracer.errors import LabError
from tracer.lab import features, procs
from tracer.lab.apply import Applier, existing_namespaces, remove_namespaces, require_root
from tracer.lab.describe import describe
from tracer.lab.spec import Namespace, Topology

DEFAULT_PREFIX = "htlab-"
_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")


class Lab:
    """A topology bound to a prefix. Nothing touches the kernel until :meth:`up`."""

    def __init__(self, topology: Topology, prefix: str = DEFAULT_PREFIX) -> None:
        if not _PREFIX_RE.match(prefix):
            raise LabError(f"bad lab prefix {prefix!r}: use 1-32 letters, digits, '_', '.', '-'")
        self.topology = topology
        self.prefix = prefix

    @property
    def name(self) -> str:
        """The lab's name, e.g. ``two-node-vxlan``."""
        return self.topology.name

    def __repr__(self) -> str:
        return f"Lab({self.name!r}, prefix={self.prefix!r})"

    def netns(self, short: str) -> str:
        """The namespace name of node or pod ``short`` (``a1`` -> ``htlab-a1``)."""
        self._ns(short)
        return self.prefix + short

    def addr(self, short: str) -> str:
        """The main IPv4 address of ``short``: a pod's eth0, a node's underlay address."""
        addr = self._ns(short).addr
        if addr is None:
            raise LabError(f"{short} has no address in lab {self.name}")
        return addr

    def namespaces(self) -> list[str]:
        """Every namespace name this lab uses, nodes first as declared."""
        return [self.prefix + ns.short for ns in self.topology.namespaces]

    def present(self) -> list[str]:
        """The lab's namespaces that exist right now."""
        existing = existing_namespaces()
        return [name for name in self.namespaces() if name in existing]

    def is_up(self) -> bool:
        """True if every namespace of the lab exists."""
        return len(self.present()) == len(self.topology.namespaces)

    @property
    def state_dir(self) -> Path:
        """Where the lab's daemons' pid files and its fault record live."""
        return procs.state_dir(self.prefix, self.name)

    def missing_features(self) -> list[str]:
        """Kernel features this lab needs that the running kernel lacks (probed)."""
        require_root()
        return features.missing(self.topology.features(), self.prefix)

    def up(self, rollback: bool = True) -> None:
        """Build the lab. On failure raise LabError and, with ``rollback``, delete what
        this call created (never namespaces that existed before it).

        A lab needing a device kind or IPVS the kernel lacks fails before anything is
        built, naming the feature and its config option."""
        require_root()
        lacking = self.missing_features()
        if lacking:
            raise LabError(features.describe_missing(self.name, lacking))
        applier = Applier(self.topology, self.prefix)
        try:
            applier.run()
        except BaseException:
            if rollback:
                procs.stop(self.state_dir)
                remove_namespaces(applier.created)
                procs.forget(self.state_dir)
            raise

    def down(self) -> list[str]:
        """Stop the lab's daemons, delete every namespace of the lab that exists, forget
        its faults; return the namespace names deleted.

        Works on a half-built lab too: all state lives inside the lab's namespaces, its
        daemons and its state directory.
        """
        require_root()
        procs.stop(self.state_dir)
        removed = remove_namespaces(self.namespaces())
        procs.forget(self.state_dir)
        return removed

    def exec(
        self, short: str, argv: Sequence[str], timeout: float = 30.0, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``short``'s namespace, capturing text output.

        A timeout raises LabError (the child is killed); ``check`` raises LabError on a
        non-zero exit.
        """
        cmd = ["ip", "netns", "exec", self.netns(short), *argv]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"{' '.join(argv)} in {short}: timed out after {timeout:g}s") from exc
        if check and proc.returncode != 0:
            raise LabError(
                f"{' '.join(argv)} in {short}: exit {proc.returncode}: {proc.stderr.strip()}"
            )
        return proc

    def describe(self) -> str:
        """An ASCII picture of the lab, its namespaces, and each one's devices."""
        return describe(self.topology, self.prefix)

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def _ns(self, short: str) -> Namespace:
        try:
            return self.topology.namespace(short)
        except KeyError:
            known = ", ".join(ns.short for ns in self.topology.namespaces)
            raise LabError(f"lab {self.name} has no node or pod {short!r} (has: {known})") from None
