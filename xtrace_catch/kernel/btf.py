"""Read struct layouts and section variables from a BPF object's BTF. Pure: no syscalls.

The object's ``.BTF`` section is taken with pyelftools and decoded here (the format is
documented in the kernel's Documentation/bpf/btf.rst): a header, a type table whose
entries carry kind-specific trailers, and a string table.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from pathlib import Path

from elftools.elf.elffile import ELFFile

from ..errors import ObjectError

__all__ = ["Btf", "StructLayout", "Member"]

_MAGIC = 0xEB9F
(K_INT, K_PTR, K_ARRAY, K_STRUCT, K_UNION, K_ENUM, K_FWD, K_TYPEDEF, K_VOLATILE, K_CONST,
 K_RESTRICT, K_FUNC, K_FUNC_PROTO, K_VAR, K_DATASEC, K_FLOAT, K_DECL_TAG, K_TYPE_TAG, K_ENUM64) = range(1, 20)
_MODIFIERS = {K_TYPEDEF, K_VOLATILE, K_CONST, K_RESTRICT, K_TYPE_TAG}


@dataclass(frozen=True)
class Member:
    name: str
    offset: int  # bytes
    size: int  # bytes


@dataclass(frozen=True)
class StructLayout:
    name: str
    size: int
    members: dict[str, Member] = field(default_factory=dict)


@dataclass
class _Type:
    kind: int
    name: str
    size_or_type: int
    vlen: int
    kind_flag: bool
    extra: tuple = ()


class Btf:
    """Decoded BTF of one object."""

    def __init__(self, raw: bytes, symbols: dict[str, dict[str, int]] | None = None) -> None:
        # ELF symbol offsets per section: clang leaves DATASEC variable offsets at 0 in the
        # object file and libbpf fills them in from the symbol table at open; so do we.
        self._symbols = symbols or {}
        if len(raw) < 24:
            raise ObjectError("BTF section too short")
        magic = struct.unpack_from("<H", raw, 0)[0]
        if magic != _MAGIC:
            raise ObjectError(f"BTF magic {magic:#x} is not {_MAGIC:#x} (not a little-endian BPF object?)")
        hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<5I", raw, 4)
        self._strings = raw[hdr_len + str_off: hdr_len + str_off + str_len]
        self.types: list[_Type | None] = [None]  # type id 0 is void
        self._parse_types(raw[hdr_len + type_off: hdr_len + type_off + type_len])

    @classmethod
    def from_elf(cls, source: str | Path | bytes) -> Btf:
        """BTF of an ELF object given as a path or its bytes."""
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        try:
            elf = ELFFile(io.BytesIO(data))
            sec = elf.get_section_by_name(".BTF")
        except Exception as exc:  # pyelftools raises its own ELFError and struct errors
            raise ObjectError(f"not a readable ELF object: {exc}") from exc
        if sec is None:
            raise ObjectError("the BPF object has no .BTF section (build it with clang -g)")
        return cls(sec.data(), _section_symbols(elf))

    def _str(self, off: int) -> str:
        end = self._strings.index(b"\0", off)
        return self._strings[off:end].decode()

    def _parse_types(self, t: bytes) -> None:
        pos = 0
        while pos < len(t):
            name_off, info, st = struct.unpack_from("<3I", t, pos)
            pos += 12
            vlen, kind, kflag = info & 0xFFFF, (info >> 24) & 0x1F, bool(info >> 31)
            extra: tuple = ()
            if kind == K_INT or kind == K_VAR or kind == K_DECL_TAG:
                extra = struct.unpack_from("<I", t, pos)
                pos += 4
            elif kind == K_ARRAY:
                extra = struct.unpack_from("<3I", t, pos)
                pos += 12
            elif kind in (K_STRUCT, K_UNION, K_DATASEC, K_ENUM64):
                extra = tuple(struct.unpack_from("<3I", t, pos + 12 * i) for i in range(vlen))
                pos += 12 * vlen
            elif kind == K_ENUM:
                extra = tuple(struct.unpack_from("<Ii", t, pos + 8 * i) for i in range(vlen))
                pos += 8 * vlen
            elif kind == K_FUNC_PROTO:
                pos += 8 * vlen
            elif kind not in (K_PTR, K_FWD, K_TYPEDEF, K_VOLATILE, K_CONST, K_RESTRICT, K_FUNC, K_FLOAT, K_TYPE_TAG):
                raise ObjectError(f"unknown BTF kind {kind}")
            self.types.append(_Type(kind, self._str(name_off), st, vlen, kflag, extra))

    def _find(self, kind: int, name: str) -> int:
        for tid, ty in enumerate(self.types):
            if ty is not None and ty.kind == kind and ty.name == name:
                return tid
        raise KeyError(name)

    def sizeof(self, tid: int) -> int:
        ty = self.types[tid]
        if ty is None:
            return 0
        if ty.kind in _MODIFIERS or ty.kind == K_VAR:
            return self.sizeof(ty.size_or_type)
        if ty.kind == K_PTR:
            return 8
        if ty.kind == K_ARRAY:
            elem, _index, nelems = ty.extra
            return self.sizeof(elem) * nelems
        return ty.size_or_type

    def struct(self, name: str) -> StructLayout:
        """Layout of `struct name`. Raises KeyError when absent."""
        ty = self.types[self._find(K_STRUCT, name)]
        assert ty is not None
        members = {}
        for m_name_off, m_type, m_off in ty.extra:
            bit_off = m_off & 0xFFFFFF if ty.kind_flag else m_off
            mname = self._str(m_name_off)
            members[mname] = Member(mname, bit_off // 8, self.sizeof(m_type))
        return StructLayout(name, ty.size_or_type, members)

    def datasec(self, name: str) -> dict[str, Member]:
        """Variables of a data section (e.g. '.rodata'): name -> offset and size."""
        ty = self.types[self._find(K_DATASEC, name)]
        assert ty is not None
        out = {}
        syms = self._symbols.get(name, {})
        for var_type, off, size in ty.extra:
            var = self.types[var_type]
            assert var is not None
            out[var.name] = Member(var.name, syms.get(var.name, off), size)
        return out

    def enum(self, name: str) -> dict[str, int]:
        ty = self.types[self._find(K_ENUM, name)]
        assert ty is not None
        return {self._str(n): v for n, v in ty.extra}


def _section_symbols(elf: ELFFile) -> dict[str, dict[str, int]]:
    """section name -> {object symbol name: offset in that section}."""
    out: dict[str, dict[str, int]] = {}
    symtab = elf.get_section_by_name(".symtab")
    if symtab is None:
        return out
    for sym in symtab.iter_symbols():  # type: ignore[attr-defined]
        shndx = sym["st_shndx"]
        if sym["st_info"]["type"] != "STT_OBJECT" or not isinstance(shndx, int):
            continue
        out.setdefault(elf.get_section(shndx).name, {})[sym.name] = int(sym["st_value"])
    return out
