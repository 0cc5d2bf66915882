"""Calibration and held-out text, and per-layer activation statistics for PCA conversion.

Text is offline: Python's bundled reference docs (`pydoc_data.topics`), split deterministically so
evaluation never sees calibration text. Statistics per attention layer: the second moment E[x x^T] of
the attention input and its mean E[x]; the conversion derives K, V and query statistics from them.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mlabatch.models.conversion.config import CalibrationConfig, ConversionError
from mlabatch.models.conversion.linalg import one_thread

HELD_OUT_EVERY = 4  # every 4th topic (sorted by name) is held out for evaluation
STATS_VERSION = 2  # bump when LayerStats changes, so cached statistics of another layout are not read


def _topics() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[name].strip() for name in sorted(topics) if len(topics[name].strip()) > 400]


def heldout_texts(n: int) -> list[str]:
    """The first n held-out texts (never used for calibration)."""
    return _topics()[::HELD_OUT_EVERY][:n]


def calibration_texts(config: CalibrationConfig) -> list[str]:
    """config.num_texts calibration texts: from config.texts_file (one per line) or the non-held-out topics."""
    if config.texts_file is not None:
        path = Path(config.texts_file)
        if not path.is_file():
            raise ConversionError(f"calibration file {path} does not exist")
        texts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not texts:
            raise ConversionError(f"calibration file {path} has no non-empty lines")
        return texts[: config.num_texts]
    return [t for i, t in enumerate(_topics()) if i % HELD_OUT_EVERY][: config.num_texts]


@dataclass
class LayerStats:
    """Statistics of one attention layer's input x, and with `fed` of its input x' after converted earlier layers."""

    second_moment: torch.Tensor  # E[x x^T], float64 [d_model, d_model]
    mean: torch.Tensor  # E[x], float64 [d_model]
    fed: LayerStats | None = None  # statistics of x'
    cross: torch.Tensor | None = None  # E[x x'^T]


class _Accumulator:
    def __init__(self, d: int) -> None:
        self.xx = torch.zeros(d, d, dtype=torch.float64)
        self.x = torch.zeros(d, dtype=torch.float64)
        self.n = 0

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        self.xx += x.T @ x
        self.x += x.sum(0)
        self.n += x.shape[0]

    def result(self) -> LayerStats:
        return LayerStats(self.xx / self.n, self.x / self.n)


@torch.no_grad()
def collect_stats(model: nn.Module, tokenizer, inputs: list[nn.Linear], config: CalibrationConfig) -> list[LayerStats]:
    """Run the calibration texts one by one through `model`, hooking the input of each layer's query Linear."""
    accs = [_Accumulator(q.in_features) for q in inputs]
    handles = [q.register_forward_pre_hook(acc) for q, acc in zip(inputs, accs)]
    try:
        with one_thread():
            for text in calibration_texts(config):
                ids = tokenizer(text, truncation=True, max_length=config.max_tokens, return_tensors="pt")
                model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
    finally:
        for h in handles:
            h.remove()
    return [acc.result() for acc in accs]


class _Captured(Exception):
    """Raised by _Capture to stop a forward pass once the hooked layer's input is in hand."""


class _Capture:
    def __init__(self) -> None:
        self.x: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple) -> None:
        self.x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        raise _Captured


@torch.no_grad()
def collect_fed_stats(source: nn.Module, fed: nn.Module, tokenizer, source_input: nn.Linear, fed_input: nn.Linear,
                      config: CalibrationConfig, stats: LayerStats) -> LayerStats:
    """`stats` plus the statistics of the same layer's input in `fed` (a copy whose earlier layers are converted)."""
    caps = _Capture(), _Capture()
    handles = source_input.register_forward_pre_hook(caps[0]), fed_input.register_forward_pre_hook(caps[1])
    acc, cross = _Accumulator(fed_input.in_features), 0.0
    try:
        with one_thread():
            for text in calibration_texts(config):
                ids = tokenizer(text, truncation=True, max_length=config.max_tokens, return_tensors="pt")
                for model in (source, fed):
                    try:
                        model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
                    except _Captured:
                        pass
                acc(fed_input, (caps[1].x,))
                cross = cross + caps[0].x.T @ caps[1].x
    finally:
        for h in handles:
            h.remove()
    return LayerStats(stats.second_moment, stats.mean, acc.result(), cross / acc.n)


def cache_key(hf_dir: Path, config: CalibrationConfig) -> str:
    """File-name-safe key of a model directory's weights and a calibration setting."""
    weights = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in hf_dir.glob("*.safetensors"))
    blob = json.dumps([STATS_VERSION, str(hf_dir.resolve()), weights, config.num_texts, config.max_tokens,
                       None if config.texts_file is None else str(config.texts_file)])
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def save_stats(stats: list[LayerStats], path: Path) -> None:
    """Store statistics (torch.save of plain tensors)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save([(s.second_moment, s.mean) for s in stats], path)


def load_stats(path: Path) -> list[LayerStats]:
    """Read statistics written by save_stats."""
    return [LayerStats(*row) for row in torch.load(path, weights_only=True)]
