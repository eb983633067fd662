"""Notify: how a module tells the operator one line (the CLI writes it to stderr as 'xtrace-catch: ...')."""

from collections.abc import Callable

Notify = Callable[[str], None]

__all__ = ["Notify"]
