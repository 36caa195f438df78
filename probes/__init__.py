"""hoptrace's BPF C sources and the objects the build step compiles from them.

``probes/hoptrace.h`` is the one definition of the kernel/user-space contract; the compiled
objects carry it as BTF. Nothing here is compiled at run time: ``make build`` does it.
"""

from __future__ import annotations

from pathlib import Path

from tracer.errors import BuildError

HERE = Path(__file__).resolve().parent


def object_path(name: str = "hoptrace") -> Path:
    """Path of a built BPF object; a clear error when the build step has not run."""
    path = HERE / f"{name}.bpf.o"
    if not path.exists():
        raise BuildError(
            f"{path} is not built: run 'make build' (needs clang and bpftool; "
            "only the build machine needs them)"
        )
    return path
