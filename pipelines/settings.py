"""Validated job settings: one pydantic model per conf section, unknown keys rejected.

The YAML files in conf/ and `--set` overrides are merged by `mlabatch.jobs.config` and validated
here once, before any work starts.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mlabatch.models.conversion.config import CalibrationConfig, HealConfig
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


def same_table(a: str, b: str) -> bool:
    """Whether two table settings name one table: paths compared after resolving `~`, `./`, `..`, a trailing
    slash, relative against absolute and symlinks; names compared case-insensitively, as catalogs do."""
    return _table_identity(a) == _table_identity(b)


def _table_identity(name: str) -> str:
    return str(Path(name).expanduser().resolve()) if "/" in name else name.lower()


def check_column_name(value: str) -> str:
    """Accept a plain column name (letters, digits, underscore); reject expressions and quoting."""
    if not _COLUMN.match(value):
        raise ValueError(f"{value!r} is not a plain column name (letters, digits, underscore)")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceSettings(_Section):
    table: str = Field(description="the documents: a Delta table path locally, catalog.schema.table or a "
                                   "/Volumes path on Databricks")
    id_column: str = Field("id", description="the column that identifies a document")
    text_column: str = Field("text", description="the string column to embed")

    _table = field_validator("table")(check_table_name)
    _columns = field_validator("id_column", "text_column")(check_column_name)


class WriteSettings(_Section):
    """How a pipeline writes its target table; the keys of both `target` (embed) and `generate`.

    Work is committed in increments so that a killed run, run again, redoes at most one; deleting the
    rows of more than `max_delete_fraction` of the target's ids (a wrong source table, most likely)
    stops the run before it writes anything.
    """

    ids_per_increment: int = Field(10_000, ge=1, description="ids processed and MERGEd per commit: a killed "
                                                              "run, run again, redoes at most these")
    max_delete_fraction: float = Field(0.1, ge=0.0, le=1.0, description="a run that would delete the rows of more "
                                       "than this share of the target's ids stops before writing anything")


class TargetSettings(WriteSettings):
    table: str = Field(description="where embeddings are MERGEd on (id, chunk): a Delta table path or name, "
                                   "created on the first run")

    _table = field_validator("table")(check_table_name)


class ModelSettings(_Section):
    uri: str = Field(description="the encoder: models:/name@alias, models:/name/version, a model directory "
                                 "or a /Volumes path")
    name: str = Field("mlabatch-minilm", description="what `mlabatch models prepare` registers the bundled "
                                                     "MiniLM as")
    alias: str = Field("champion", description="the alias `mlabatch models prepare` sets")


class EmbedSettings(_Section):
    max_tokens: int = Field(256, ge=8, le=8192, description="window length in tokens (capped by the model's)")
    overlap_tokens: int = Field(32, ge=0, description="tokens shared by consecutive windows of a long document")
    max_chunks_per_doc: int = Field(64, ge=1, description="beyond this a document is cut and its last row "
                                                          "flagged truncated")
    token_budget: int | None = Field(None, ge=64, description="real tokens per model call; null: 65536 on GPU, "
                                                              "4096 on CPU")
    long_documents: Literal["chunks", "pool"] = Field(
        "chunks", description="chunks: a row per window; pool: one token-weighted mean vector per document")
    partitions_per_worker: int = Field(2, ge=1, le=64, description="Spark partitions = this x (GPUs, or cores "
                                                                   "on CPU)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: the task's GPU, else the CPU")

    @model_validator(mode="after")
    def _overlap_fits(self) -> "EmbedSettings":
        if self.overlap_tokens >= self.max_tokens // 2:
            raise ValueError(
                f"overlap_tokens ({self.overlap_tokens}) must be less than half of max_tokens "
                f"({self.max_tokens}), or windows would barely advance"
            )
        return self


class ConvertSettings(HealConfig, _Section):
    """`mlabatch convert`: which model to convert to MLA, how, and where to register it.

    The healing keys (heal_steps, heal_lr, ...) are the fields of HealConfig, with their limits and defaults.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)  # like every section

    source: str = Field("minilm", description="minilm or smollm2 (the bundled packages), or a Hugging Face "
                                             "model directory")
    output_dir: str = Field("data/models/minilm-mla", description="where the converted model is written")
    overwrite: bool = Field(False, description="replace a model already in output_dir (else the run stops)")
    method: Literal["exact", "svd", "pca"] = Field(
        "pca", description="exact (lossless), svd (weights only), pca (calibrated on activations)")
    d_c: int | None = Field(192, ge=1, description="latent width per token and layer; ignored with exact")
    d_rope: int | None = Field(None, ge=0, description="shared RoPE key width for decoders (0 or 64 for the "
                                                       "kernel); null: the method's default")
    calibration_texts: int = Field(CalibrationConfig.num_texts, ge=1,
                                   description="calibration texts (offline prose, code and CJK, or a sample of "
                                               "calibration_table); held-out text of each domain kept apart")
    calibration_max_tokens: int = Field(CalibrationConfig.max_tokens, ge=8, description="tokens per calibration text")
    calibration_table: str | None = Field(None, description="the path of a Delta table to calibrate on, e.g. the "
                                                            "source the model will embed; null: the offline domains")
    calibration_column: str = Field(CalibrationConfig.column, description="calibration_table's text column")
    name: str = Field("mlabatch-minilm-mla", description="registered as models:/<name>@<alias>")
    alias: str = Field("champion", description="the alias set on the registered version")


class GenerateSettings(SamplingParams, EngineConfig, WriteSettings):
    """`mlabatch generate`: a Delta table of prompts -> a Delta table of continuations (MLA decoder).

    The sampling and engine keys (max_new_tokens, temperature, ..., max_batch, num_blocks, ...) are the
    fields of SamplingParams and EngineConfig, with their limits and defaults; this adds where the
    prompts come from and go, the model, and how Spark runs it.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)  # like every section

    source_table: str = Field("data/tables/prompts", description="a Delta table with an id and a prompt column")
    target_table: str = Field("data/tables/generations", description="MERGEd on id; rows of prompts gone from "
                                                                     "the source are deleted")
    id_column: str = Field("id", description="the column that identifies a prompt")
    prompt_column: str = Field("prompt", description="the string column to continue")
    model_uri: str = Field("data/models/smollm2-mla", description="an MLA-converted decoder (`mlabatch convert`): "
                                                                  "a directory or models:/name@alias")
    partitions_per_worker: int = Field(2, ge=1, le=64, description="Spark partitions = this x (GPUs, or cores "
                                                                   "on CPU)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: the task's GPU, else the CPU")

    _tables = field_validator("source_table", "target_table")(check_table_name)
    _columns = field_validator("id_column", "prompt_column")(check_column_name)

    @model_validator(mode="after")
    def _distinct_tables(self) -> "GenerateSettings":
        if same_table(self.source_table, self.target_table):
            raise ValueError("generate.source_table and generate.target_table are the same table; pick another target")
        return self


class MlflowSettings(_Section):
    tracking_uri: str = Field(description="where runs are logged: sqlite:///path locally, databricks on Databricks")
    registry_uri: str | None = Field(None, description="where models are registered; null: the tracking URI")
    artifact_location: str | None = Field(None, description="a directory for a new experiment's artifacts; "
                                                            "null: MLflow's default")
    experiment: str = Field("mlabatch", description="the experiment runs are logged in (created if missing)")


class SparkSettings(_Section):
    master: str | None = Field(None, description="local Spark's master, e.g. local[2,4]; ignored on Databricks")
    max_records_per_batch: int = Field(512, ge=1, description="rows per Arrow batch sent to a Python worker")


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
        if same_table(self.source.table, self.target.table):
            raise ValueError("source.table and target.table are the same table; pick another target")
        return self
