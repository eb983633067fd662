"""Attach our programs to an interface: XDP or TC. Only attach/netlink.py imports pyroute2.

Two paths (XTRACE_ATTACH=auto|link|netlink chooses; auto is the default):
- BPF links where the kernel has them: XDP links (Linux >= 5.9) and TCX links (Linux >= 6.6,
  libbpf >= 1.3). A link lives as long as the agent's fd, so a killed agent leaves nothing
  attached and no cleanup is needed. TCX links go first on ingress (we see every packet before
  another program may drop it) and last on egress (we count what leaves), beside any others.
- netlink (clsact + cls_bpf filter, XDP by ifindex): older kernels and libbpf 1.1, with the
  crash-state records and `cleanup` below.

Rules (DESIGN.md): never destroy what we did not create. XDP attaches with
XDP_FLAGS_UPDATE_IF_NOEXIST and detaches only our own program (XDP_FLAGS_REPLACE with
our fd as the expected one); TC adds a clsact qdisc only when absent and remembers that,
adds one filter per direction with our fixed handle and priority, and removes only those.
Leftovers of a killed run are recognised by program/filter name and replaced, with a
message. A small state file records whether a run created the clsact qdisc, so cleanup
after SIGKILL can remove it too.
"""

from ..settings import XdpMode
from .cleanup import cleanup
from .hooks import Attachments
from .interfaces import find_interface, get_interface, list_interfaces
from .names import OUR_PROG_NAMES, TC_HANDLE, TC_PRIO, Interface
from .policy import attach_paths, attach_policy
from .state import HookLock
from .tc import tcx_programs

__all__ = [
    "XdpMode",
    "attach_policy",
    "attach_paths",
    "Interface",
    "Attachments",
    "HookLock",
    "list_interfaces",
    "get_interface",
    "find_interface",
    "cleanup",
    "tcx_programs",
    "TC_HANDLE",
    "TC_PRIO",
    "OUR_PROG_NAMES",
]
