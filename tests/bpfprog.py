"""The trivial BPF program, ``r0 = retval; exit``: a program that is not ours, for the tests that
need another user's program on a hook, and the baseline bench/ measures ours against."""

from __future__ import annotations

import ctypes

from xtrace_catch.kernel import libbpf

__all__ = ["load_trivial_program"]


class _Insn(ctypes.Structure):
    """struct bpf_insn: opcode, dst_reg:4 | src_reg:4, offset, immediate."""

    _fields_ = [("code", ctypes.c_uint8), ("regs", ctypes.c_uint8), ("off", ctypes.c_int16), ("imm", ctypes.c_int32)]


BPF_MOV64_IMM = 0xB7  # BPF_ALU64 | BPF_MOV | BPF_K
BPF_EXIT = 0x95  # BPF_JMP | BPF_EXIT


def load_trivial_program(lib: libbpf.Libbpf, prog_type: int, retval: int, name: str = "xt_empty") -> int:
    """Load ``r0 = retval; exit`` as a `prog_type` program through libbpf's bpf_prog_load. Returns its
    fd, which the caller closes."""
    insns = (_Insn * 2)(_Insn(code=BPF_MOV64_IMM, regs=0, off=0, imm=retval), _Insn(code=BPF_EXIT))
    fd = lib.lib.bpf_prog_load(prog_type, name.encode(), b"GPL", insns, len(insns), None)
    return lib.check_int(fd, "bpf_prog_load (trivial program)")
