"""Validated job settings: one pydantic model per conf section, unknown keys rejected.

The YAML files in conf/ and `--set` overrides are merged by `mlabatch.jobs.config` and validated
here once, before any work starts.
"""
from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mlabatch.models.generation.config import EngineConfig, SamplingParams

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,2}$")
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_table_name(value: str) -> str:
    """Accept a Delta table path (has a '/') or a [catalog.]schema.table name; reject anything else."""
    value = value.strip()
    if "/" in value or _IDENTIFIER.match(value):
        return value
    raise ValueError(
        f"{value!r} is neither a Delta table path (e.g. data/tables/documents, /Volumes/c/s/v/t) "
        "nor a table name of the form catalog.schema.table"
    )


def check_column_name(value: str) -> str:
    """Accept a plain column name (letters, digits, underscore); reject expressions and quoting."""
    if not _COLUMN.match(value):
        raise ValueError(f"{value!r} is not a plain column name (letters, digits, underscore)")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceSettings(_Section):
    table: str
    id_column: str = "id"
    text_column: str = "text"
    build_sample_if_missing: bool = False

    _table = field_validator("table")(check_table_name)
    _columns = field_validator("id_column", "text_column")(check_column_name)


class TargetSettings(_Section):
    table: str

    _table = field_validator("table")(check_table_name)


class ModelSettings(_Section):
    uri: str
    name: str = "mlabatch-minilm"
    alias: str = "champion"


class EmbedSettings(_Section):
    max_tokens: int = Field(256, ge=8, le=8192)
    overlap_tokens: int = Field(32, ge=0)
    max_chunks_per_doc: int = Field(64, ge=1)
    token_budget: int | None = Field(None, ge=64)
    long_documents: Literal["chunks", "pool"] = "chunks"
    partitions_per_worker: int = Field(2, ge=1, le=64)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _overlap_fits(self) -> "EmbedSettings":
        if self.overlap_tokens >= self.max_tokens // 2:
            raise ValueError(
                f"overlap_tokens ({self.overlap_tokens}) must be less than half of max_tokens "
                f"({self.max_tokens}), or windows would barely advance"
            )
        return self


class ConvertSettings(_Section):
    """`mlabatch convert`: which model to convert to MLA, how, and where to register it."""

    source: str = "minilm"  # "minilm" or "smollm2" (the bundled packages), or a Hugging Face model directory
    output_dir: str = "data/models/minilm-mla"
    method: Literal["exact", "svd", "pca"] = "pca"
    d_c: int | None = Field(192, ge=1)  # latent width; null with method exact derives the exact width
    d_rope: int | None = Field(None, ge=0)  # shared RoPE key width (decoders); null: the method's default
    calibration_texts: int = Field(32, ge=1)
    calibration_max_tokens: int = Field(256, ge=8)
    name: str = "mlabatch-minilm-mla"  # registered model name
    alias: str = "champion"


class GenerateSettings(SamplingParams, EngineConfig):
    """`mlabatch generate`: a Delta table of prompts -> a Delta table of continuations (MLA decoder).

    The sampling and engine keys (max_new_tokens, temperature, ..., max_batch, num_blocks, ...) are the
    fields of SamplingParams and EngineConfig, with their limits and defaults; this adds where the
    prompts come from and go, the model, and how Spark runs it.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)  # like every section

    source_table: str = "data/tables/prompts"
    target_table: str = "data/tables/generations"
    id_column: str = "id"
    prompt_column: str = "prompt"
    model_uri: str = "data/models/smollm2-mla"  # a converted decoder: directory or models:/name@alias
    partitions_per_worker: int = Field(2, ge=1, le=64)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    _tables = field_validator("source_table", "target_table")(check_table_name)
    _columns = field_validator("id_column", "prompt_column")(check_column_name)

    @model_validator(mode="after")
    def _distinct_tables(self) -> "GenerateSettings":
        if self.source_table == self.target_table:
            raise ValueError("generate.source_table and generate.target_table are the same table; pick another target")
        return self


class MlflowSettings(_Section):
    tracking_uri: str
    registry_uri: str | None = None
    artifact_location: str | None = None
    experiment: str = "mlabatch"


class SparkSettings(_Section):
    master: str | None = None
    max_records_per_batch: int = Field(512, ge=1)


class Settings(_Section):
    """Every section, validated together: each command reads the sections it uses."""

    source: SourceSettings
    target: TargetSettings
    model: ModelSettings
    embed: EmbedSettings = EmbedSettings()
    mlflow: MlflowSettings
    spark: SparkSettings = SparkSettings()
    convert: ConvertSettings = ConvertSettings()
    generate: GenerateSettings = GenerateSettings()

    @model_validator(mode="after")
    def _distinct_tables(self) -> "Settings":
        if self.source.table == self.target.table:
            raise ValueError("source.table and target.table are the same table; pick another target")
        return self
