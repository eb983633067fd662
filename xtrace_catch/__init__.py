"""xtrace-catch: eBPF (XDP/TC) flow monitor for RoCE/InfiniBand GPU clusters."""

__version__ = "0.1.0"
