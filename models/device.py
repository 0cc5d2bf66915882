"""Where a network runs: the device that 'auto' means here."""
from __future__ import annotations

import torch


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' means the current CUDA device when there is one, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
