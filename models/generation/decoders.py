"""Which decoders the generation engine runs, and how a model directory becomes an MLADecoder."""
from __future__ import annotations

from pathlib import Path

import torch

from mlabatch.models.mla_decoder import MLADecoder, load_mla_decoder


def load_decoder(model_dir: Path, device: torch.device) -> MLADecoder:
    """The MLA decoder of a converted directory on `device`: bf16 on GPU, float32 on CPU."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return load_mla_decoder(model_dir, device, dtype)
