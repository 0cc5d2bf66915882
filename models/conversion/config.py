"""Conversion settings (MLAConfig, CalibrationConfig) and the error raised for requests that cannot be honoured.

A converted layer caches, per token, one latent row `[c (d_c) ; k_rope (d_rope)]` shared by all heads.
`d_rope` is 0 for models with learned positions, a multiple of head_dim for RoPE models: head_dim is
RoRoPE (one shared RoPE key), n_kv_heads * head_dim keeps every RoPE'd key exactly.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

METHODS = ("exact", "svd", "pca")


class ConversionError(ValueError):
    """A conversion request that cannot be honoured; the message names what is supported."""


@dataclass(frozen=True)
class CalibrationConfig:
    """Which text calibrates PCA: `texts_file` (one text per line), a sample of `table`'s `column` (a Delta table
    path, e.g. the source the model will embed), or, if both are None, the offline domains (`calibration.py`).

    `max_tokens` also sets the context span that a RoPE model's RoPE slots are chosen for (`rorope.rope_slots`).
    """

    num_texts: int = 32
    max_tokens: int = 256
    texts_file: Path | None = None
    table: str | None = None
    column: str = "text"

    def __post_init__(self) -> None:
        if self.texts_file is not None and self.table is not None:
            raise ConversionError("calibrate on a texts file or a table, not both")
        if self.num_texts < 1 or self.max_tokens < 8:
            raise ConversionError(f"calibration needs num_texts >= 1 and max_tokens >= 8, got {self}")


@dataclass(frozen=True)
class MLAConfig:
    """What to convert to: latent width d_c, RoPE key width d_rope, method; None widths mean exact."""

    d_c: int | None = None
    d_rope: int | None = None
    method: str = "pca"
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConversionError(f"method {self.method!r} is not one of {METHODS}")
        if self.method != "exact" and self.d_c is None:
            raise ConversionError(f"method {self.method!r} needs d_c; only 'exact' derives it")
        if self.calibration.texts_file is not None and not Path(self.calibration.texts_file).is_file():
            raise ConversionError(f"calibration file {self.calibration.texts_file} does not exist")

    def to_dict(self) -> dict:
        """JSON-ready form (paths as strings)."""
        out = asdict(self)
        tf = out["calibration"]["texts_file"]
        out["calibration"]["texts_file"] = None if tf is None else str(tf)
        return out


class HealConfig(BaseModel):
    """How to heal a converted model (`healing.heal`): a short distillation from its source; 0 steps: none.

    The fields are also `convert.heal_*` settings (the `convert:` job section extends this class).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    heal_steps: int = Field(0, ge=0, description="distillation steps after conversion (only the MLA attention "
                                                 "weights train); 0: no healing")
    heal_lr: float = Field(1e-5, gt=0, description="peak learning rate (AdamW; warm-up, then cosine decay); "
                                                   "SmolLM2 diverged at 4e-5")
    heal_batch: int = Field(4, ge=1, description="sequences per step")
    heal_seq_tokens: int = Field(256, ge=16, description="tokens per training sequence")
    heal_eval_every: int = Field(25, ge=1, description="steps between held-out evaluations (shown in the progress "
                                                       "bar) and checkpoints")
