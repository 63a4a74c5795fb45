"""Helpers for the tests that start processes with ``torch.multiprocessing.spawn`` and gloo."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import torch
import torch.distributed as dist


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for ``init_method``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def gloo_group(rank: int, world: int, port: int) -> Iterator[None]:
    """This process as ``rank`` of ``world`` in a gloo group on 127.0.0.1:``port``, one thread each;
    the group is destroyed on the way out."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        dist.destroy_process_group()
