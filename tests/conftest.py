"""Shared pytest fixtures: skips that name what is missing, and labs that always go down.

Kernel-tier tests take ``vxlan_lab`` (two-node-vxlan, up for the test, down afterwards,
pass or fail) ``make_lab`` (any lab, any number, each under its own prefix) or ``lab_prefix`` (a
prefix whose namespaces are deleted afterwards, for tests that drive ``Lab`` themselves). Prefixes
are ``ht<pid>x<n>-``, so concurrent test runs never share a namespace.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable, Iterator

import pytest

from tracer.lab import Lab, get_lab
from tracer.lab.apply import existing_namespaces, remove_namespaces

RUN_PREFIX = f"ht{os.getpid()}x"  # the "x" keeps pid 12 from matching pid 123's names
_counter = itertools.count()


def lab_support_missing() -> str | None:
    """Why labs cannot run here ("needs root", "needs ip netns ..."), or None if they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs ip netns (install iproute2)"
    if shutil.which("ping") is None:
        return "needs ping (install iputils-ping)"
    return None


def require_lab_support() -> None:
    """Skip the calling test, naming what is missing, unless labs can run here."""
    reason = lab_support_missing()
    if reason:
        pytest.skip(reason)


def new_prefix() -> str:
    """A namespace prefix no other lab of this (or any concurrent) test run uses."""
    return f"{RUN_PREFIX}{next(_counter)}-"


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_namespaces() -> Iterator[None]:
    """Safety net: whatever a test left behind under this run's prefixes is deleted."""
    yield
    if os.geteuid() == 0:
        remove_namespaces(sorted(n for n in existing_namespaces() if n.startswith(RUN_PREFIX)))


@pytest.fixture
def lab_prefix() -> Iterator[str]:
    """A fresh prefix for a test that drives labs itself; skips without root, and deletes
    every namespace under the prefix afterwards."""
    require_lab_support()
    prefix = new_prefix()
    yield prefix
    remove_namespaces(sorted(n for n in existing_namespaces() if n.startswith(prefix)))


@pytest.fixture
def make_lab() -> Iterator[Callable[..., Lab]]:
    """Factory: ``make_lab("bridge")`` brings a lab up under a fresh prefix; every lab it
    made is taken down when the test ends, however it ends."""
    require_lab_support()
    made: list[Lab] = []

    def make(name: str = "two-node-vxlan", prefix: str | None = None) -> Lab:
        lab = get_lab(name, prefix=prefix or new_prefix())
        made.append(lab)
        lab.up()
        return lab

    try:
        yield make
    finally:
        for lab in made:
            lab.down()


@pytest.fixture
def vxlan_lab(make_lab: Callable[..., Lab]) -> Lab:
    """two-node-vxlan, up for this test under a unique prefix, always torn down."""
    return make_lab("two-node-vxlan")
