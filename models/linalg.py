"""Small dense linear algebra helpers for conversion."""
from __future__ import annotations

import torch


def eigh_descending(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues and eigenvectors (columns) of a symmetric matrix, largest first.

    Runs LAPACK on one thread: the matrices are small, and multi-threaded eigh was measured 200x slower
    on a busy 2-core machine.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        vals, vecs = torch.linalg.eigh(c)
    finally:
        torch.set_num_threads(threads)
    return vals.flip(-1), vecs.flip(-1)
