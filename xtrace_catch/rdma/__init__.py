"""RDMA NIC counters from sysfs: port counters (``rdma`` mode) and driver hw_counters (``nccl`` mode),
and the unified RoCE view (what the NIC carried that the kernel never saw, :mod:`.bypass`).

Hardware-offloaded RoCE and native InfiniBand never pass the kernel stack, so XDP/TC do not see
them; the NIC's own counters do, under a sysfs root (``/sys``; ``/host/sys`` in a container)::

    <root>/class/infiniband/<dev>/ports/<n>/{state,phys_state,rate,link_layer}
    <root>/class/infiniband/<dev>/ports/<n>/counters/*        PMA PortCounters (+ Extended)
    <root>/class/infiniband/<dev>/ports/<n>/counters_ext/*    mlx4 legacy 64-bit copies (*_64)
    <root>/class/infiniband/<dev>/ports/<n>/hw_counters/*     driver counters (nccl mode)
    <root>/class/infiniband/<dev>/hw_counters/*               device-level driver counters (nccl mode)
    <root>/class/net/<if>/device/infiniband/<dev>             netdev -> RDMA device; port = dev_port + 1

The modules, in the order a reading flows: ``counters`` (parsing, widths, the wrap/reset rule),
``devices`` (what is there, which devices a run reads), ``reader`` (the file I/O, the only one),
``records`` (an interval's deltas, rates, health flags), ``render`` (JSON records, text lines),
``metrics`` (xtrace_rdma_* samples). Units: ``port_{xmit,rcv}_data`` count 4-byte words; every
byte figure derived from them is bytes (x4). ``lifespan`` is the hw_counters cache period, never
a counter.
"""

from . import counters, devices, metrics, reader, records, render
from .counters import *  # noqa: F403
from .devices import *  # noqa: F403
from .metrics import *  # noqa: F403
from .reader import *  # noqa: F403
from .records import *  # noqa: F403
from .render import *  # noqa: F403

__all__ = [*counters.__all__, *devices.__all__, *reader.__all__, *records.__all__, *render.__all__,
           *metrics.__all__]
