"""The kernel side: the libbpf binding, BTF, the object, its maps and programs.

Rule: only this package imports ctypes or loads libbpf.so. Everything else reaches the
kernel through these modules and sees our errors (errors.py), never an errno or a pointer.
`layout` mirrors ebpf/xtrace.h; `keys` is the one codec from a flow key's bytes to text.
"""
