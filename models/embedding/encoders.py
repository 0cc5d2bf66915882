"""Which encoders the embedder runs, and how each is loaded as a packed encoder."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from mlabatch.models.mla_config import is_converted
from mlabatch.models.packed_encoder import PackedEncoder, packed_from_hf_bert, packed_from_mla_encoder

SUPPORTED_ENCODERS = ("bert", "MLA-converted bert")


def load_encoder(model_dir: Path, device: torch.device) -> PackedEncoder:
    """The packed encoder: ours for MLA-converted models, else built on the Hugging Face BertModel."""
    if is_converted(model_dir):
        from mlabatch.models.mla_encoder import load_mla_encoder

        return packed_from_mla_encoder(load_mla_encoder(model_dir, device))
    model_type = json.loads((model_dir / "config.json").read_text()).get("model_type")
    if model_type != "bert":
        raise ValueError(f"{model_dir} is a {model_type!r} model; the embedder supports {SUPPORTED_ENCODERS}")
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = BertModel.from_pretrained(model_dir, dtype=torch.float32)
    encoder = packed_from_hf_bert(model).to(device).eval()
    return encoder.half() if device.type == "cuda" else encoder
