"""Lab topologies: the container networks people run, built in network namespaces.

::

    from tracer.lab import get_lab, LABS

    with get_lab("two-node-vxlan", prefix="htlab-") as lab:
        lab.exec("a1", ["ping", "-c", "1", lab.addr("b1")], timeout=5)

Modules: :mod:`~tracer.lab.spec` (the declarative description), :mod:`~tracer.lab.topologies`
(the labs, as data), :mod:`~tracer.lab.apply` (the one generic applier, pyroute2),
:mod:`~tracer.lab.lab` (:class:`Lab`: up, down, exec, describe).
"""

from __future__ import annotations

from tracer.errors import LabError
from tracer.lab.lab import DEFAULT_PREFIX, Lab
from tracer.lab.topologies import LABS

__all__ = ["DEFAULT_PREFIX", "LABS", "Lab", "get_lab"]


def get_lab(name: str, prefix: str = DEFAULT_PREFIX) -> Lab:
    """The lab called ``name`` (a key of :data:`LABS`) under namespace ``prefix``."""
    try:
        builder = LABS[name]
    except KeyError:
        raise LabError(f"no lab {name!r}; labs: {', '.join(sorted(LABS))}") from None
    return Lab(builder(), prefix=prefix)
