"""The one exception tree of hoptrace.

    HoptraceError                 anything hoptrace reports to the user (exit status 1)
    ├── UsageError                bad input: a bad filter, an unknown netns, a bad option (exit 2)
    │   └── FilterError           the filter expression does not parse or is too complex
    ├── PermissionError_          not root / missing capability (exit 1)
    ├── KernelError               the kernel refused something
    │   ├── NoBTFError            /sys/kernel/btf/vmlinux missing
    │   ├── LoadError             bpf_object__load failed (carries the verifier log)
    │   └── AttachError           a core probe could not be attached
    ├── BuildError                the BPF object has not been built
    └── LabError                  a lab topology could not be created or removed

The CLI prints ``hoptrace: <message>`` on one line and exits non-zero; ``--debug`` adds the
traceback. Every message names what failed and, where there is one, what to do about it.
"""

from __future__ import annotations


class HoptraceError(Exception):
    exit_code = 1


class UsageError(HoptraceError):
    exit_code = 2


class FilterError(UsageError):
    pass


class PermissionError_(HoptraceError):  # noqa: N801 - avoids shadowing the builtin
    pass


class KernelError(HoptraceError):
    pass


class NoBTFError(KernelError):
    pass


class LoadError(KernelError):
    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log

    def __str__(self) -> str:
        base = super().__str__()
        if not self.log:
            return base
        tail = "\n".join(self.log.strip().splitlines()[-15:])
        return f"{base}\n--- last lines of the libbpf/verifier log ---\n{tail}"


class AttachError(KernelError):
    pass


class BuildError(HoptraceError):
    pass


class LabError(HoptraceError):
    pass
