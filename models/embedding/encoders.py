"""Which encoders the embedder runs, and how each is loaded as a packed encoder."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from mlabatch.models.mla_config import is_converted
from mlabatch.models.mla_encoder import ENCODER_TYPES, EncoderDims
from mlabatch.models.packed_encoder import PackedEncoder, packed_from_hf, packed_from_mla_encoder


def unsupported_encoder(model_dir: Path, model_type: str | None) -> str:
    """Why the embedder cannot run a `model_type` directory, naming what it runs and the nearest workaround."""
    if model_type == "mpnet":
        reason = ("MPNet adds a learned relative-position bias to every attention score, which the packed engine's "
                  "variable-length attention cannot take; nearest: a BERT, RoBERTa or XLM-R embedder")
    else:
        reason = "nearest: a sentence-transformers model of one of those families"
    return (f"{model_dir} is a {model_type!r} model; the embedder runs {', '.join(ENCODER_TYPES)} encoders, plain or "
            f"MLA-converted ({reason})")


def load_encoder(model_dir: Path, device: torch.device) -> PackedEncoder:
    """The packed encoder: ours for MLA-converted models, else built on the Hugging Face model's own weights."""
    if is_converted(model_dir):
        from mlabatch.models.mla_encoder import load_mla_encoder

        return packed_from_mla_encoder(load_mla_encoder(model_dir, device))
    cfg = json.loads((model_dir / "config.json").read_text())
    if cfg.get("model_type") not in ENCODER_TYPES:
        raise ValueError(unsupported_encoder(model_dir, cfg.get("model_type")))
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32)
    encoder = packed_from_hf(model, EncoderDims.from_config(cfg)).to(device).eval()
    return encoder.half() if device.type == "cuda" else encoder
