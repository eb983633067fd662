"""The kernel's and libbpf's ABI as ctypes sees it: constants of uapi linux/bpf.h, the option
structs of libbpf's bpf.h, and libbpf's own error codes. No behaviour: :mod:`.libbpf` uses them."""

from __future__ import annotations

import ctypes
from ctypes import CFUNCTYPE, POINTER, Structure, c_bool, c_char_p, c_int, c_size_t, c_uint32, c_uint64, c_void_p

__all__ = [
    "BPF_ANY", "BPF_NOEXIST", "BPF_EXIST", "BPF_F_LOCK", "BPF_TRACE_ITER", "BPF_PROG_TYPE_SCHED_CLS",
    "BPF_PROG_TYPE_XDP", "BPF_XDP", "BPF_TCX_INGRESS", "BPF_TCX_EGRESS", "BPF_F_BEFORE", "BPF_F_AFTER",
    "BPF_MAP_TYPE_PERCPU_HASH", "BPF_MAP_TYPE_PERCPU_ARRAY", "BPF_MAP_TYPE_LRU_PERCPU_HASH",
    "BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE", "PERCPU_MAP_TYPES",
    "LIBBPF_ERRNO_START", "LIBBPF_ERRNO_FORMAT", "LIBBPF_ERRNO_ENDIAN",
    "TestRunOpts", "MapBatchOpts", "LinkCreateOpts", "ProgQueryOpts", "ProgInfo", "PRINT_FN", "PROTOTYPES",
]

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
BPF_F_LOCK = 4  # element flag: copy a value under its bpf_spin_lock
BPF_TRACE_ITER = 28  # attach type of a bpf_iter program
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_PROG_TYPE_XDP = 6
# enum bpf_attach_type values we attach with (uapi linux/bpf.h)
BPF_XDP = 37
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47
# BPF_LINK_CREATE flags for multi-program hooks (TCX): where in the chain a link goes
BPF_F_BEFORE = 1 << 3
BPF_F_AFTER = 1 << 4

# enum bpf_map_type: the per-CPU maps, whose values hold one slot per possible CPU
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE = 21
PERCPU_MAP_TYPES = frozenset({BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH,
                              BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE})

# enum libbpf_errno (libbpf.h): libbpf's own error codes, above the kernel's errnos
LIBBPF_ERRNO_START = 4000
LIBBPF_ERRNO_FORMAT = 4001  # not a BPF ELF object
LIBBPF_ERRNO_ENDIAN = 4003  # the object's byte order is not the host's


class TestRunOpts(Structure):
    """struct bpf_test_run_opts (libbpf bpf.h), byte for byte."""

    __test__ = False  # not a pytest class
    _fields_ = [
        ("sz", c_size_t),
        ("data_in", c_void_p),
        ("data_out", c_void_p),
        ("data_size_in", c_uint32),
        ("data_size_out", c_uint32),
        ("ctx_in", c_void_p),
        ("ctx_out", c_void_p),
        ("ctx_size_in", c_uint32),
        ("ctx_size_out", c_uint32),
        ("retval", c_uint32),
        ("repeat", c_int),
        ("duration", c_uint32),
        ("flags", c_uint32),
        ("cpu", c_uint32),
        ("batch_size", c_uint32),
    ]


class MapBatchOpts(Structure):
    """struct bpf_map_batch_opts (libbpf bpf.h)."""

    _fields_ = [("sz", c_size_t), ("elem_flags", c_uint64), ("flags", c_uint64)]


class LinkCreateOpts(Structure):
    """The head of struct bpf_link_create_opts (libbpf bpf.h, the same since 0.3): sz, flags,
    iter_info, iter_info_len, target_btf_id. The per-hook union follows (TCX's relative_fd etc.);
    we leave it zero, so `sz` covers only this head, which every libbpf accepts."""

    _fields_ = [("sz", c_size_t), ("flags", c_uint32), ("_pad", c_uint32), ("iter_info", c_void_p),
                ("iter_info_len", c_uint32), ("target_btf_id", c_uint32)]


class ProgQueryOpts(Structure):
    """The head of struct bpf_prog_query_opts (libbpf >= 1.0)."""

    _fields_ = [("sz", c_size_t), ("query_flags", c_uint32), ("attach_flags", c_uint32),
                ("prog_ids", POINTER(c_uint32)), ("prog_cnt", c_uint32), ("_pad", c_uint32),
                ("prog_attach_flags", POINTER(c_uint32))]


class ProgInfo(Structure):
    """The head of struct bpf_prog_info (linux/bpf.h) up to the name: the kernel fills as much
    as the caller's length asks for."""

    _fields_ = [("type", c_uint32), ("id", c_uint32), ("tag", ctypes.c_uint8 * 8), ("jited_prog_len", c_uint32),
                ("xlated_prog_len", c_uint32), ("jited_prog_insns", c_uint64), ("xlated_prog_insns", c_uint64),
                ("load_time", c_uint64), ("created_by_uid", c_uint32), ("nr_map_ids", c_uint32),
                ("map_ids", c_uint64), ("name", ctypes.c_char * 16)]


# libbpf_print_fn_t: (level, format, va_list)
PRINT_FN = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)

# The libbpf functions the binding calls: name -> (argtypes, restype). All exist in libbpf 1.1.
PROTOTYPES: dict[str, tuple[list[object], object]] = {
    "libbpf_major_version": ([], c_uint32),
    "libbpf_minor_version": ([], c_uint32),
    "libbpf_version_string": ([], c_char_p),
    "libbpf_set_print": ([PRINT_FN], c_void_p),
    "libbpf_num_possible_cpus": ([], c_int),
    "libbpf_strerror": ([c_int, c_char_p, c_size_t], c_int),
    "bpf_object__open_file": ([c_char_p, c_void_p], c_void_p),
    "bpf_object__open_mem": ([c_void_p, c_size_t, c_void_p], c_void_p),
    "bpf_object__load": ([c_void_p], c_int),
    "bpf_object__close": ([c_void_p], None),
    "bpf_object__find_map_by_name": ([c_void_p, c_char_p], c_void_p),
    "bpf_object__find_program_by_name": ([c_void_p, c_char_p], c_void_p),
    "bpf_object__next_program": ([c_void_p, c_void_p], c_void_p),
    "bpf_object__next_map": ([c_void_p, c_void_p], c_void_p),
    "bpf_map__set_max_entries": ([c_void_p, c_uint32], c_int),
    "bpf_map__max_entries": ([c_void_p], c_uint32),
    "bpf_map__key_size": ([c_void_p], c_uint32),
    "bpf_map__value_size": ([c_void_p], c_uint32),
    "bpf_map__name": ([c_void_p], c_char_p),
    "bpf_map__fd": ([c_void_p], c_int),
    "bpf_map__type": ([c_void_p], c_int),
    "bpf_map__initial_value": ([c_void_p, POINTER(c_size_t)], c_void_p),
    "bpf_map__set_initial_value": ([c_void_p, c_void_p, c_size_t], c_int),
    "bpf_program__set_autoload": ([c_void_p, c_bool], c_int),
    "bpf_program__autoload": ([c_void_p], c_bool),
    "bpf_program__fd": ([c_void_p], c_int),
    "bpf_program__name": ([c_void_p], c_char_p),
    "bpf_map_lookup_elem": ([c_int, c_void_p, c_void_p], c_int),
    "bpf_map_lookup_elem_flags": ([c_int, c_void_p, c_void_p, c_uint64], c_int),
    "bpf_map_lookup_and_delete_elem_flags": ([c_int, c_void_p, c_void_p, c_uint64], c_int),
    "bpf_map_update_elem": ([c_int, c_void_p, c_void_p, c_uint64], c_int),
    "bpf_map_delete_elem": ([c_int, c_void_p], c_int),
    "bpf_map_lookup_and_delete_elem": ([c_int, c_void_p, c_void_p], c_int),
    "bpf_map_get_next_key": ([c_int, c_void_p, c_void_p], c_int),
    "bpf_map_lookup_batch": (
        [c_int, c_void_p, c_void_p, c_void_p, c_void_p, POINTER(c_uint32), POINTER(MapBatchOpts)],
        c_int,
    ),
    "bpf_map_update_batch": (
        [c_int, c_void_p, c_void_p, POINTER(c_uint32), POINTER(MapBatchOpts)],
        c_int,
    ),
    "bpf_map_delete_batch": ([c_int, c_void_p, POINTER(c_uint32), POINTER(MapBatchOpts)], c_int),
    "bpf_prog_test_run_opts": ([c_int, POINTER(TestRunOpts)], c_int),
    "bpf_prog_load": ([c_int, c_char_p, c_char_p, c_void_p, c_size_t, c_void_p], c_int),
    "bpf_prog_get_fd_by_id": ([c_uint32], c_int),
    "bpf_obj_get_info_by_fd": ([c_int, c_void_p, POINTER(c_uint32)], c_int),
    "bpf_link_create": ([c_int, c_int, c_int, POINTER(LinkCreateOpts)], c_int),
    "bpf_iter_create": ([c_int], c_int),
    "bpf_prog_query_opts": ([c_int, c_int, POINTER(ProgQueryOpts)], c_int),
}
