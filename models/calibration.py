"""Calibration and held-out text, and per-layer activation statistics for PCA conversion.

Text is offline: Python's bundled reference docs (`pydoc_data.topics`), split deterministically so
evaluation never sees calibration text. Statistics per attention layer: the second moment E[x x^T] of
the attention input, its mean E[x], and mean |K|, mean |V| of its bias-free key and value projections.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mlabatch.models.mla_config import CalibrationConfig, ConversionError

HELD_OUT_EVERY = 4  # every 4th topic (sorted by name) is held out for evaluation


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
    """Activation statistics of one attention layer's input x and its bias-free K = x Wk^T, V = x Wv^T."""

    second_moment: torch.Tensor  # E[x x^T], float64 [d_model, d_model]
    mean: torch.Tensor  # E[x], float64 [d_model]
    k_abs: float  # mean |K|
    v_abs: float  # mean |V|


class _Accumulator:
    def __init__(self, w_k: torch.Tensor, w_v: torch.Tensor) -> None:
        d = w_k.shape[1]
        self.w_k, self.w_v = w_k, w_v
        self.xx = torch.zeros(d, d, dtype=torch.float64)
        self.x = torch.zeros(d, dtype=torch.float64)
        self.k_abs = self.v_abs = 0.0
        self.n = 0

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        self.xx += x.double().T @ x.double()
        self.x += x.double().sum(0)
        self.k_abs += (x @ self.w_k.T).abs().mean(-1).sum().item()
        self.v_abs += (x @ self.w_v.T).abs().mean(-1).sum().item()
        self.n += x.shape[0]

    def result(self) -> LayerStats:
        return LayerStats(self.xx / self.n, self.x / self.n, self.k_abs / self.n, self.v_abs / self.n)


@torch.no_grad()
def collect_stats(model: nn.Module, tokenizer, layers: list[tuple[nn.Module, torch.Tensor, torch.Tensor]],
                  config: CalibrationConfig) -> list[LayerStats]:
    """Run the calibration texts one by one through `model`, hooking each (query Linear, Wk, Wv) layer."""
    accs = [_Accumulator(w_k.float(), w_v.float()) for _, w_k, w_v in layers]
    handles = [q.register_forward_pre_hook(acc) for (q, _, _), acc in zip(layers, accs)]
    try:
        for text in calibration_texts(config):
            ids = tokenizer(text, truncation=True, max_length=config.max_tokens, return_tensors="pt")
            model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
    finally:
        for h in handles:
            h.remove()
    return [acc.result() for acc in accs]


def cache_key(hf_dir: Path, config: CalibrationConfig) -> str:
    """File-name-safe key of a model directory's weights and a calibration setting."""
    weights = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in hf_dir.glob("*.safetensors"))
    blob = json.dumps([str(hf_dir.resolve()), weights, config.num_texts, config.max_tokens,
                       None if config.texts_file is None else str(config.texts_file)])
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def save_stats(stats: list[LayerStats], path: Path) -> None:
    """Store statistics (torch.save of plain tensors and floats)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save([(s.second_moment, s.mean, s.k_abs, s.v_abs) for s in stats], path)


def load_stats(path: Path) -> list[LayerStats]:
    """Read statistics written by save_stats."""
    return [LayerStats(*row) for row in torch.load(path, weights_only=True)]
