"""The tag result files are named by: the device a benchmark really ran on (`h200`, `h100`, `cpu`, ...)."""
from __future__ import annotations

import re

import torch


def device_tag(device: torch.device) -> str:
    """'cpu', or the GPU's model from its name (e.g. 'NVIDIA H200' -> 'h200'), else 'cuda'."""
    if device.type != "cuda":
        return device.type
    match = re.search(r"\b([A-Z]\d{2,4}[A-Za-z]?)\b", torch.cuda.get_device_name(device))
    return match.group(1).lower() if match else "cuda"
