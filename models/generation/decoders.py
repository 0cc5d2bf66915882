"""Which decoders the generation engine runs, and how a model directory becomes an MLADecoder.

A converted directory loads as it is. An unconverted one of a supported family is converted exactly in
memory (the lift that caches every RoPE'd key), so users can compare the original with a compressed
conversion, when that lift fits the decode kernel; otherwise the error names `mlabatch convert`.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from mlabatch.models.conversion.config import ConversionError, MLAConfig
from mlabatch.models.conversion.convert import convert, resolve_widths
from mlabatch.models.conversion.families import read_source_shape
from mlabatch.models.mla_config import is_converted
from mlabatch.models.mla_decoder import MLADecoder, load_mla_decoder


def unconverted_problem(model_dir: Path) -> str | None:
    """Why an unconverted directory cannot be served by an exact in-memory conversion (None: it can)."""
    try:
        shape = read_source_shape(model_dir)
        if shape.family.kind != "decoder":
            return (f"{model_dir} holds a {shape.arch!r} encoder, which embeds text; generation needs a decoder "
                    "(mlabatch embed runs encoders; `mlabatch convert` converts decoders)")
        resolve_widths(shape, MLAConfig(method="exact"))
    except ConversionError as err:
        return (f"{model_dir} cannot be served unconverted ({err}). Convert it first: mlabatch convert "
                f"--set convert.source={model_dir} --set convert.method=pca --set convert.d_c=512 "
                "--set convert.d_rope=64 --set convert.output_dir=data/models/<name>-mla")
    return None


def load_decoder(model_dir: Path, device: torch.device) -> MLADecoder:
    """The MLA decoder of `model_dir` (converted, or converted exactly in memory) on `device`: bf16 on GPU,
    float32 on CPU."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if is_converted(model_dir):
        return load_mla_decoder(model_dir, device, dtype)
    problem = unconverted_problem(model_dir)
    if problem is not None:
        raise ValueError(problem)
    with tempfile.TemporaryDirectory(prefix="mlabatch-exact-") as tmp:
        return load_mla_decoder(convert(model_dir, MLAConfig(method="exact"), Path(tmp) / "mla"), device, dtype)
