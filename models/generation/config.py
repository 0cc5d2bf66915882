"""The generation engine's settings: how to continue a prompt (SamplingParams) and how to size the engine
(EngineConfig). These are the only place their fields, limits and defaults live: the `generate:` job
settings extend both, and the sampling hash that keys incremental runs is a dump of SamplingParams.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class SamplingParams(BaseModel):
    """How to continue a prompt; temperature 0 is greedy (top_k, top_p and seed are then unused).

    Random draws depend only on (seed, step, token), so a row's output is fixed by its prompt, these
    settings and its seed: a retried task reproduces it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_new_tokens: int = Field(128, ge=1, description="tokens generated per prompt at most")
    temperature: float = Field(0.0, ge=0, description="0: greedy; > 0 samples")
    top_k: int = Field(0, ge=0, description="sample from the k likeliest tokens; 0: no top-k cut")
    top_p: float = Field(1.0, gt=0, le=1, description="sample from the smallest set with this probability; "
                                                      "1.0: no nucleus cut")
    seed: int = Field(0, ge=0, description="a sampled row depends only on (prompt, settings, seed): retries "
                                           "reproduce it")
    stop: tuple[str, ...] = Field((), description="stop strings; the text ends before the first one")
    ignore_eos: bool = Field(False, description="keep generating past the end-of-sequence token")

    @field_validator("stop")
    @classmethod
    def _drop_empty(cls, stop: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(s for s in stop if s)

    @property
    def greedy(self) -> bool:
        """True when no randomness is involved."""
        return self.temperature == 0


class EngineConfig(BaseModel):
    """Engine sizing: the KV pool is `num_blocks` pages, or on GPU `memory_fraction` of free memory."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_batch: int = Field(256, ge=1, description="sequences decoded together (continuous batching)")
    prefill_token_budget: int = Field(8192, ge=64, description="prompt tokens per prefill pass (one prompt may "
                                                               "exceed it)")
    num_blocks: int | None = Field(None, ge=2, description="KV pool in 64-token pages; null: memory_fraction on "
                                                           "GPU, a fixed pool (kv_cache.CPU_BLOCKS) on CPU")
    memory_fraction: float = Field(0.5, gt=0, lt=1, description="GPU: share of free memory for the KV pool")
    cuda_graphs: bool = Field(True, description="replay decode steps from CUDA graphs (GPU only)")
    chat_template: bool = Field(False, description="wrap each prompt as one user message in the model's chat "
                                                   "template")
