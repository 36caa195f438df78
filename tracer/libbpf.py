"""ctypes bindings to the system libbpf (``libbpf.so.1``): the only module that calls it.

Only the functions hoptrace uses are declared. libbpf 1.x returns NULL / a negative errno on
failure and sets ``errno``; :func:`check_ptr` and :func:`check_int` turn that into exceptions.
libbpf's own log (including the verifier's) is captured through ``libbpf_set_print`` so an
error can carry it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import threading
from ctypes import (
    CFUNCTYPE,
    POINTER,
    c_bool,
    c_char_p,
    c_int,
    c_long,
    c_size_t,
    c_uint,
    c_void_p,
)

from tracer.errors import BuildError

c_int64 = ctypes.c_int64
c_uint32 = ctypes.c_uint32


def _load() -> ctypes.CDLL:
    for name in ("libbpf.so.1", ctypes.util.find_library("bpf")):
        if not name:
            continue
        try:
            return ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
    raise BuildError("libbpf.so.1 not found: install Debian's libbpf1 (apt-get install libbpf1)")


_lib: ctypes.CDLL | None = None

PRINT_FN = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)

_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "libbpf_set_print": (c_void_p, [PRINT_FN]),
    "libbpf_num_possible_cpus": (c_int, []),
    "bpf_object__open_file": (c_void_p, [c_char_p, c_void_p]),
    "bpf_object__load": (c_int, [c_void_p]),
    "bpf_object__close": (None, [c_void_p]),
    "bpf_object__btf": (c_void_p, [c_void_p]),
    "bpf_object__find_program_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_object__next_program": (c_void_p, [c_void_p, c_void_p]),
    "bpf_object__find_map_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_object__next_map": (c_void_p, [c_void_p, c_void_p]),
    "bpf_map__name": (c_char_p, [c_void_p]),
    "bpf_map__fd": (c_int, [c_void_p]),
    "bpf_map__set_max_entries": (c_int, [c_void_p, c_uint]),
    "bpf_map__initial_value": (c_void_p, [c_void_p, POINTER(c_size_t)]),
    "bpf_program__name": (c_char_p, [c_void_p]),
    "bpf_program__section_name": (c_char_p, [c_void_p]),
    "bpf_program__set_autoload": (c_int, [c_void_p, c_bool]),
    "bpf_program__set_type": (c_int, [c_void_p, c_int]),
    "bpf_program__set_expected_attach_type": (c_int, [c_void_p, c_int]),
    "bpf_program__set_attach_target": (c_int, [c_void_p, c_int, c_char_p]),
    "bpf_program__fd": (c_int, [c_void_p]),
    "bpf_program__attach": (c_void_p, [c_void_p]),
    "bpf_program__attach_kprobe": (c_void_p, [c_void_p, c_bool, c_char_p]),
    "bpf_program__attach_kprobe_opts": (c_void_p, [c_void_p, c_char_p, c_void_p]),
    "bpf_program__attach_kprobe_multi_opts": (c_void_p, [c_void_p, c_char_p, c_void_p]),
    "bpf_link__destroy": (c_int, [c_void_p]),
    "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, ctypes.c_uint64]),
    "btf__load_vmlinux_btf": (c_void_p, []),
    "btf__parse": (c_void_p, [c_char_p, c_void_p]),
    "btf__parse_split": (c_void_p, [c_char_p, c_void_p]),
    "btf__free": (None, [c_void_p]),
    "btf__type_cnt": (c_uint32, [c_void_p]),
    "btf__find_by_name_kind": (ctypes.c_int32, [c_void_p, c_char_p, c_uint32]),
    "btf__type_by_id": (c_void_p, [c_void_p, c_uint32]),
    "btf__name_by_offset": (c_char_p, [c_void_p, c_uint32]),
    "btf__resolve_size": (c_int64, [c_void_p, c_uint32]),
}


def lib() -> ctypes.CDLL:
    """The loaded libbpf with prototypes set (loaded once, on first use)."""
    global _lib
    if _lib is None:
        loaded = _load()
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(loaded, name)
            fn.restype = restype
            fn.argtypes = argtypes
        _lib = loaded
        _install_printer()
    return _lib


# ---- libbpf's log -------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
_libc.vsnprintf.restype = c_int
_log_lock = threading.Lock()
_log: list[str] = []
_echo = False


_PRINT_BUF = ctypes.create_string_buffer(1 << 20)  # verifier logs arrive as one message


@PRINT_FN
def _printer(level: int, fmt: bytes, args: int) -> int:
    buf = _PRINT_BUF
    with _log_lock:
        _libc.vsnprintf(buf, len(buf), fmt, args)
        text = buf.value.decode(errors="replace")
        _log.append(text)
        if len(_log) > 20000:
            del _log[:10000]
    if _echo:
        os.write(2, b"libbpf: " + text.encode())
    return 0


def _install_printer() -> None:
    assert _lib is not None
    _lib.libbpf_set_print(_printer)


def set_echo(on: bool) -> None:
    """Echo libbpf's log to stderr as it comes (``--debug``)."""
    global _echo
    _echo = on


def take_log() -> str:
    """Return and clear what libbpf has logged since the last call."""
    with _log_lock:
        text = "".join(_log)
        _log.clear()
    return text


# ---- error helpers ------------------------------------------------------------------------


def errmsg(err: int) -> str:
    err = abs(err)
    return f"{errno.errorcode.get(err, str(err))}: {os.strerror(err)}"


def check_ptr(ptr: int | None, what: str, exc: type[Exception]) -> int:
    if not ptr:
        err = ctypes.get_errno()
        raise exc(f"{what} failed ({errmsg(err)})")
    return ptr


def check_int(ret: int, what: str, exc: type[Exception]) -> int:
    if ret < 0:
        raise exc(f"{what} failed ({errmsg(ret)})")
    return ret


# ---- kprobes with attach cookies (--probes all-skb) -----------------------------------------


class KprobeOpts(ctypes.Structure):
    """``struct bpf_kprobe_opts`` of libbpf 1.1 (libbpf.h)."""

    _fields_ = [
        ("sz", c_size_t),
        ("bpf_cookie", ctypes.c_uint64),
        ("offset", c_size_t),
        ("retprobe", c_bool),
    ]


class KprobeMultiOpts(ctypes.Structure):
    """``struct bpf_kprobe_multi_opts`` of libbpf 1.1 (libbpf.h)."""

    _fields_ = [
        ("sz", c_size_t),
        ("syms", POINTER(c_char_p)),
        ("addrs", c_void_p),
        ("cookies", POINTER(ctypes.c_uint64)),
        ("cnt", c_size_t),
        ("retprobe", c_bool),
    ]


def attach_kprobe(prog: int, func: str, cookie: int) -> int:
    """A kprobe on ``func`` with ``cookie`` for bpf_get_attach_cookie(); the link, or OSError."""
    opts = KprobeOpts(sz=ctypes.sizeof(KprobeOpts), bpf_cookie=cookie)
    link = lib().bpf_program__attach_kprobe_opts(prog, func.encode(), ctypes.byref(opts))
    if not link:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(link)


def attach_kprobe_multi(prog: int, funcs: list[str], cookies: list[int]) -> int:
    """One kprobe.multi link on every function of ``funcs`` (kernel symbol names), the i-th
    with ``cookies[i]``; the link, or OSError (the kernel refuses the whole list if it refuses
    one function)."""
    n = len(funcs)
    syms = (c_char_p * n)(*(f.encode() for f in funcs))
    cks = (ctypes.c_uint64 * n)(*cookies)
    opts = KprobeMultiOpts(sz=ctypes.sizeof(KprobeMultiOpts), syms=syms, cookies=cks, cnt=n)
    link = lib().bpf_program__attach_kprobe_multi_opts(prog, None, ctypes.byref(opts))
    if not link:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(link)


# ---- the raw bpf(2) syscall, for what libbpf 1.1 lacks ------------------------------------

SYS_bpf = 321  # x86_64
BPF_LINK_CREATE = 28
BPF_PROG_TYPE_NETFILTER = 32
BPF_NETFILTER = 45

_libc.syscall.restype = c_long


def link_create_netfilter(prog_fd: int, pf: int, hooknum: int, priority: int) -> int:
    """BPF_LINK_CREATE for a netfilter hook in the calling thread's netns; returns the link fd.

    union bpf_attr.link_create: prog_fd, target_fd, attach_type, flags, then
    netfilter { pf, hooknum, priority, flags } (include/uapi/linux/bpf.h, Linux 6.4+).
    """
    attr = (ctypes.c_uint32 * 16)()
    attr[0] = prog_fd
    attr[2] = BPF_NETFILTER
    attr[4] = pf
    attr[5] = hooknum
    attr[6] = ctypes.c_uint32(priority).value
    fd = _libc.syscall(c_long(SYS_bpf), c_int(BPF_LINK_CREATE), attr, c_uint(ctypes.sizeof(attr)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(fd)


CLONE_NEWNET = 0x40000000
_libc.setns.argtypes = [c_int, c_int]
_libc.setns.restype = c_int


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace open at ``fd``."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")
