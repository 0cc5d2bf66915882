"""The typed schema of `mla_config.json`, the file `convert` writes beside a converted model's weights.

It is read once per load (`MLAModelConfig.read`, or `read_converted` for the whole directory) and passed
on as a value; nothing else parses the file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict
from safetensors.torch import load_file

from mlabatch.models.mla_attention import MLAShape

MLA_CONFIG_FILE = "mla_config.json"


class MLAModelConfig(BaseModel):
    """What a converted model's runtime needs: its latent sizes, and for decoders RoPE and kernel widths."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    architecture: str  # the source's Hugging Face model_type
    kind: Literal["encoder", "decoder"]
    d_c: int
    d_rope: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    has_nope: bool  # False when every key stays RoPE'd exactly (no low-rank key part)
    kv_values_per_token_before: int
    kv_values_per_token_after: int
    conversion: dict  # the conversion request, source directory and seconds taken (a record, not read back)
    rope_scaling: float | None = None  # decoders: the source's RoPE attention scaling
    tie_word_embeddings: bool | None = None  # decoders
    kernel_head_dim_v: int | None = None  # decoders: the decode kernel's (head_dim_v, d_rope) for a cache row
    kernel_d_rope: int | None = None
    qk_norm: bool = False  # decoders: per-head q/k RMSNorm before RoPE (Qwen3)

    @classmethod
    def read(cls, model_dir: str | Path, kind: str | None = None) -> "MLAModelConfig":
        """The config of a converted model directory; `kind` ("encoder"/"decoder") is checked when given."""
        path = Path(model_dir) / MLA_CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{model_dir} is not an MLA-converted model (no {MLA_CONFIG_FILE}); "
                                    "convert it first with `mlabatch convert`")
        config = cls.model_validate_json(path.read_text())
        if kind is not None and config.kind != kind:
            article = "an" if kind == "encoder" else "a"
            raise ValueError(f"{model_dir} holds a converted {config.kind} model, not {article} {kind}")
        return config

    def write(self, model_dir: Path) -> Path:
        """Write the config into `model_dir`; returns the file's path."""
        path = model_dir / MLA_CONFIG_FILE
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path

    @property
    def cache_width(self) -> int:
        """Values cached per token per layer: d_c + d_rope."""
        return self.d_c + self.d_rope

    def attention_shape(self, d_model: int, rms_norm_eps: float | None = None) -> MLAShape:
        """The MLAShape of every attention layer of this model (`rms_norm_eps` for q/k norm, decoders)."""
        return MLAShape(d_model=d_model, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads, head_dim=self.head_dim,
                        d_c=self.d_c, d_rope=self.d_rope, has_nope=self.has_nope,
                        qk_norm_eps=rms_norm_eps if self.qk_norm else None)


def is_converted(model_dir: str | Path) -> bool:
    """Whether `model_dir` holds an MLA-converted model."""
    return (Path(model_dir) / MLA_CONFIG_FILE).is_file()


def read_converted(model_dir: str | Path, kind: str) -> tuple[MLAModelConfig, dict, dict[str, torch.Tensor]]:
    """(MLA config, the source's config.json, the weights) of a converted `kind` model directory."""
    model_dir = Path(model_dir)
    mla = MLAModelConfig.read(model_dir, kind)
    source = json.loads((model_dir / "config.json").read_text())
    return mla, source, load_file(str(model_dir / "model.safetensors"))
