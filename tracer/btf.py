"""Read types from BTF: the kernel's (drop reasons, hook names) and hoptrace's own object's.

hoptrace never copies a kernel enum or its own C layouts into Python tables. Drop reasons come
from the running kernel's ``enum skb_drop_reason`` (as pwru does); the event record, the config
struct and the probe ids come from the BTF of ``probes/hoptrace.bpf.o``, which clang generated
from ``probes/hoptrace.h``. :meth:`Btf.struct_dtype` turns a C struct into a numpy dtype with
the same offsets, so user space reads records exactly as the kernel wrote them.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np

from tracer import libbpf
from tracer.errors import BuildError, NoBTFError

KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM = 1, 2, 3, 4, 5, 6
KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 8, 9, 10, 11
KIND_FUNC, KIND_FUNC_PROTO = 12, 13
KIND_VAR, KIND_DATASEC, KIND_TYPE_TAG, KIND_ENUM64 = 14, 15, 18, 19
_MODIFIERS = {KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG}

VMLINUX = Path("/sys/kernel/btf/vmlinux")
BTF_DIR = VMLINUX.parent  # vmlinux and one split BTF file per loaded module


class Btf:
    """A parsed BTF blob (owning or borrowed libbpf ``struct btf *``)."""

    def __init__(self, ptr: int, owned: bool) -> None:
        self._ptr = ptr
        self._owned = owned
        self._lib = libbpf.lib()

    @classmethod
    def vmlinux(cls) -> Btf:
        if not VMLINUX.exists():
            raise NoBTFError(
                f"{VMLINUX} is missing: this kernel was built without BTF "
                "(CONFIG_DEBUG_INFO_BTF=y is needed for CO-RE probes)"
            )
        ptr = libbpf.lib().btf__load_vmlinux_btf()
        return cls(libbpf.check_ptr(ptr, "loading kernel BTF", NoBTFError), owned=True)

    @classmethod
    def from_file(cls, path: Path) -> Btf:
        ptr = libbpf.lib().btf__parse(str(path).encode(), None)
        return cls(libbpf.check_ptr(ptr, f"reading BTF of {path}", BuildError), owned=True)

    @classmethod
    def module(cls, path: Path, base: Btf) -> Btf:
        """A kernel module's BTF (/sys/kernel/btf/<module>), split on top of vmlinux's."""
        ptr = libbpf.lib().btf__parse_split(str(path).encode(), base._ptr)
        btf = cls(libbpf.check_ptr(ptr, f"reading BTF of {path}", NoBTFError), owned=True)
        btf._first = base.type_count()
        return btf

    _first = 1  # the first type id this BTF defines (a split BTF continues its base's ids)

    def type_count(self) -> int:
        """Number of type ids (including void, 0, and a split BTF's base types)."""
        return int(self._lib.btf__type_cnt(self._ptr))

    def close(self) -> None:
        if self._owned and self._ptr:
            self._lib.btf__free(self._ptr)
        self._ptr = 0

    # -- raw access -------------------------------------------------------------------------

    def _words(self, type_id: int, count: int) -> ctypes.Array[ctypes.c_uint32]:
        ptr = self._lib.btf__type_by_id(self._ptr, type_id)
        if not ptr:
            raise KeyError(type_id)
        return (ctypes.c_uint32 * count).from_address(ptr)

    def _head(self, type_id: int) -> tuple[int, int, int, int]:
        """(name_off, kind, vlen, size_or_type)."""
        w = self._words(type_id, 3)
        return w[0], (w[1] >> 24) & 0x1F, w[1] & 0xFFFF, w[2]

    def _name(self, off: int) -> str:
        raw = self._lib.btf__name_by_offset(self._ptr, off)
        return raw.decode() if raw else ""

    def find(self, name: str, kind: int) -> int:
        tid = self._lib.btf__find_by_name_kind(self._ptr, name.encode(), kind)
        if tid < 0:
            raise KeyError(f"BTF has no {name!r} (kind {kind})")
        return int(tid)

    def _resolve(self, type_id: int) -> int:
        while True:
            _, kind, _, nxt = self._head(type_id)
            if kind not in _MODIFIERS:
                return type_id
            type_id = nxt

    # -- functions ----------------------------------------------------------------------------

    def functions_taking(self, struct: str, max_pos: int) -> dict[str, int]:
        """Functions this BTF defines with a ``struct <struct> *`` parameter among their first
        ``max_pos``: {name: 1-based position of the first such parameter} (pwru's scan)."""
        lib, ptr = self._lib, self._ptr
        try:
            target = self.find(struct, KIND_STRUCT)
        except KeyError:
            return {}
        memo: dict[int, bool] = {}

        def is_ptr_to_target(tid: int) -> bool:
            hit = memo.get(tid)
            if hit is None:
                t = self._resolve(tid)
                _, kind, _, nxt = self._head(t)
                hit = kind == KIND_PTR and self._resolve(nxt) == target
                memo[tid] = hit
            return hit

        out: dict[str, int] = {}
        for tid in range(self._first, self.type_count()):
            head = lib.btf__type_by_id(ptr, tid)
            w = (ctypes.c_uint32 * 3).from_address(head)
            if (w[1] >> 24) & 0x1F != KIND_FUNC:
                continue
            proto = self._words(w[2], 3)
            vlen = proto[1] & 0xFFFF
            params = self._words(w[2], 3 + 2 * vlen)
            for pos in range(min(vlen, max_pos)):
                if is_ptr_to_target(params[4 + 2 * pos]):
                    out.setdefault(self._name(w[0]), pos + 1)
                    break
        return out

    # -- enums ------------------------------------------------------------------------------

    def enum(self, name: str) -> dict[str, int]:
        """Members of ``enum name`` as {NAME: value}."""
        try:
            tid = self.find(name, KIND_ENUM)
            wide = False
        except KeyError:
            tid = self.find(name, KIND_ENUM64)
            wide = True
        _, _, vlen, _ = self._head(tid)
        step = 3 if wide else 2
        w = self._words(tid, 3 + vlen * step)
        out: dict[str, int] = {}
        for i in range(vlen):
            base = 3 + i * step
            if wide:
                val = w[base + 1] | (w[base + 2] << 32)
            else:
                val = ctypes.c_int32(w[base + 1]).value
            out[self._name(w[base])] = val
        return out

    # -- structs as numpy dtypes ------------------------------------------------------------

    def struct_dtype(self, name: str) -> np.dtype:
        return self._dtype(self.find(name, KIND_STRUCT))

    def _dtype(self, type_id: int) -> np.dtype:
        type_id = self._resolve(type_id)
        _, kind, vlen, size = self._head(type_id)
        if kind == KIND_INT:
            enc = self._words(type_id, 4)[3]
            signed = bool((enc >> 24) & 1)
            return np.dtype(f"{'i' if signed else 'u'}{size}")
        if kind in (KIND_ENUM, KIND_ENUM64):
            return np.dtype(f"u{size}")
        if kind == KIND_PTR:
            return np.dtype("u8")
        if kind == KIND_ARRAY:
            elem, _, nelems = self._words(type_id, 6)[3:6]
            edt = self._dtype(elem)
            if edt == np.dtype("i1"):  # char[]: a C string
                return np.dtype(f"S{nelems}")
            return np.dtype((edt, (nelems,)))
        if kind == KIND_STRUCT:
            w = self._words(type_id, 3 + 3 * vlen)
            names, formats, offsets = [], [], []
            for i in range(vlen):
                name_off, mtype, moff = w[3 + 3 * i : 6 + 3 * i]
                if moff % 8:
                    raise BuildError(f"bitfield in BTF struct member at type {type_id}")
                names.append(self._name(name_off))
                formats.append(self._dtype(mtype))
                offsets.append(moff // 8)
            return np.dtype(
                {"names": names, "formats": formats, "offsets": offsets, "itemsize": size}
            )
        raise BuildError(f"BTF type {type_id} (kind {kind}) has no numpy equivalent")

    # -- global variables -------------------------------------------------------------------

    def var_offset(self, section: str, var: str) -> int:
        """Byte offset of global ``var`` inside data section ``section`` (e.g. .rodata)."""
        sid = self.find(section, KIND_DATASEC)
        _, _, vlen, _ = self._head(sid)
        w = self._words(sid, 3 + 3 * vlen)
        for i in range(vlen):
            vtype, off = w[3 + 3 * i], w[4 + 3 * i]
            name_off = self._words(vtype, 1)[0]
            if self._name(name_off) == var:
                return int(off)
        raise KeyError(f"{var} not in {section}")


@functools.cache
def kernel_enum(name: str) -> dict[int, str]:
    """A kernel enum as {value: NAME}, read from the running kernel's BTF (cached)."""
    btf = Btf.vmlinux()
    try:
        return {v: k for k, v in btf.enum(name).items()}
    except KeyError:
        return {}
    finally:
        btf.close()


def drop_reason_name(code: int) -> str:
    """``SKB_DROP_REASON_NETFILTER_DROP`` -> ``NETFILTER_DROP``; unknown codes as numbers."""
    name = kernel_enum("skb_drop_reason").get(code)
    if name is None:
        return str(code)
    return name.removeprefix("SKB_DROP_REASON_")
