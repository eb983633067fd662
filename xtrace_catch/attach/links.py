"""A BPF link held by its fd: closing the fd detaches, so a killed agent leaves nothing behind."""

from __future__ import annotations

import os


class LinkHolder:
    """An attachment that may be a BPF link: closing its fd detaches it."""

    link_fd: int | None = None

    def close_link(self) -> bool:
        """Close our link (the kernel detaches the program). False when we hold none."""
        fd, self.link_fd = self.link_fd, None
        if fd is None:
            return False
        os.close(fd)
        return True
