"""Small dense linear algebra helpers for conversion."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread in the block: on a busy 2-core machine threads made eigh 200x, a forward 4x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def eigh_descending(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues and eigenvectors (columns) of a symmetric matrix, largest first (LAPACK on one thread)."""
    with one_thread():
        vals, vecs = torch.linalg.eigh(c)
    return vals.flip(-1), vecs.flip(-1)
