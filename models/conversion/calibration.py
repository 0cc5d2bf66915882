"""Calibration and held-out text per domain, and per-layer activation statistics for PCA conversion.

Text is offline unless the user names a table: English prose (Python's reference docs, `pydoc_data.topics`),
code (the standard library's own modules), and Chinese, Japanese and Korean prose (the sample texts of
Python's CJK codec tests, where this Python ships its test package). Each domain is split
deterministically (every HELD_OUT_EVERY-th distinct text held out), so evaluation never sees calibration
text. The
default calibration interleaves the domains; `CalibrationConfig.table` calibrates on a sample of the user's
Delta table instead (read with deltalake, no Spark), whose held-out part becomes one more evaluation domain.
Statistics per attention layer: the second moment E[x x^T] of the attention input and its mean E[x]; the
conversion derives K, V and query statistics from them.
"""
from __future__ import annotations

import hashlib
import json
import re
import sysconfig
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import nn

from mlabatch.models.conversion.config import CalibrationConfig, ConversionError
from mlabatch.models.conversion.linalg import one_thread

HELD_OUT_EVERY = 4  # every 4th text of a domain is held out for evaluation
STATS_VERSION = 4  # bump when LayerStats or the default calibration text changes, so cached statistics are not reused
MIN_CHARS, MAX_CHARS = 200, 4000  # texts kept from offline sources (and pieces of longer ones)
CODE_TEXTS = 240  # code texts kept, spread over the standard library
TABLE_DOMAIN = "table"  # the evaluation domain of the user's calibration table


@cache
def _english() -> tuple[str, ...]:
    from pydoc_data.topics import topics

    return tuple(dict.fromkeys(topics[name].strip() for name in sorted(topics) if len(topics[name].strip()) > 400))


@cache
def _code() -> tuple[str, ...]:
    """Top-level functions and classes of the standard library's modules, in file order."""
    texts = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("[a-z]*.py")):
        source = path.read_text(encoding="utf-8", errors="replace")
        texts += [block for block in re.split(r"\n(?=def |class )", source) if MIN_CHARS <= len(block) <= MAX_CHARS]
    texts = list(dict.fromkeys(texts))  # distinct, so no held-out text is also a calibration text
    return tuple(texts[::max(1, len(texts) // CODE_TEXTS)])  # spread over the whole library


@cache
def _cjk() -> tuple[str, ...]:
    """Paragraph-sized pieces of the distinct CJK sample texts of Python's codec tests (none if not shipped)."""
    folder = Path(sysconfig.get_paths()["stdlib"]) / "test" / "cjkencodings"
    texts = dict.fromkeys(p.read_text(encoding="utf-8").strip() for p in sorted(folder.glob("*-utf8.txt")))
    pieces = []
    for text in texts:
        lines = [line for line in text.splitlines() if line.strip()]
        pieces += ["\n".join(lines[i:i + 3]) for i in range(0, len(lines), 3)]
    return tuple(dict.fromkeys(p for p in pieces if len(p) >= 40))  # the files share passages


OFFLINE_DOMAINS = {"english-prose": _english, "code": _code, "cjk-prose": _cjk}


def table_texts(table: str, column: str, limit: int) -> list[str]:
    """Up to `limit` distinct non-empty texts of a Delta table's `column`, in file order (deltalake, no Spark)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        dataset = DeltaTable(table).to_pyarrow_dataset()
    except TableNotFoundError:
        raise ConversionError(f"calibration table {table} is not a Delta table; point it at the table the model "
                              "will embed or generate from (a path), or leave it unset for the offline texts") from None
    if column not in dataset.schema.names:
        raise ConversionError(f"calibration table {table} has no column {column!r} (columns: {dataset.schema.names})")
    texts: dict[str, None] = {}
    for batch in dataset.to_batches(columns=[column]):
        for value in batch.column(0).to_pylist():
            if isinstance(value, str) and value.strip():
                texts[value.strip()] = None
        if len(texts) >= limit:
            break
    if not texts:
        raise ConversionError(f"calibration table {table} has no non-empty texts in column {column!r}")
    return list(texts)[:limit]


def _split(texts: list[str] | tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(calibration, held-out) parts of one domain's texts."""
    return ([t for i, t in enumerate(texts) if i % HELD_OUT_EVERY], list(texts[::HELD_OUT_EVERY]))


def _table_sample(config: CalibrationConfig, heldout: int) -> list[str]:
    limit = 2 * config.num_texts + HELD_OUT_EVERY * heldout  # enough rows for both parts of the split
    return table_texts(config.table, config.column, limit)


def heldout_domains(config: CalibrationConfig, n: int) -> dict[str, list[str]]:
    """Up to n held-out texts per evaluation domain: each offline domain that has text, and the user's table."""
    out = {name: _split(texts())[1][:n] for name, texts in OFFLINE_DOMAINS.items()}
    if config.table is not None:
        out[TABLE_DOMAIN] = _split(_table_sample(config, n))[1][:n]
    return {name: texts for name, texts in out.items() if texts}


def _interleave(parts: list[list[str]]) -> list[str]:
    return [part[i] for i in range(max(map(len, parts))) for part in parts if i < len(part)]


def heldout_texts(n: int) -> list[str]:
    """The first n held-out texts of the offline domains, interleaved (never used for calibration)."""
    return _interleave([_split(texts())[1] for texts in OFFLINE_DOMAINS.values()])[:n]


def calibration_texts(config: CalibrationConfig) -> list[str]:
    """config.num_texts calibration texts: from config.texts_file (one per line), the user's table, or the
    offline domains interleaved (never a held-out text)."""
    if config.texts_file is not None:
        path = Path(config.texts_file)
        if not path.is_file():
            raise ConversionError(f"calibration file {path} does not exist")
        texts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not texts:
            raise ConversionError(f"calibration file {path} has no non-empty lines")
        return texts[: config.num_texts]
    if config.table is not None:
        return _split(_table_sample(config, 0))[0][: config.num_texts]
    return _interleave([_split(texts())[0] for texts in OFFLINE_DOMAINS.values()])[: config.num_texts]


@dataclass
class LayerStats:
    """Statistics of one attention layer's input x, and with `fed` of its input x' after converted earlier layers.

    For sources with per-head q/k norm whose keys are compressed, x is instead u = [k^ ; v] (normalized keys
    and values) and `queries` holds each head's E[q^ q^^T] (`collect_normed_stats`).
    """

    second_moment: torch.Tensor  # E[x x^T], float64 [d_model, d_model]
    mean: torch.Tensor  # E[x], float64 [d_model]
    fed: LayerStats | None = None  # statistics of x'
    cross: torch.Tensor | None = None  # E[x x'^T]
    queries: torch.Tensor | None = None  # [n_heads, head_dim, head_dim]


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


def _run_hooked(model: nn.Module, tokenizer, config: CalibrationConfig, handles: list) -> None:
    """Run the calibration texts one by one through `model` (its hooks collect), then remove the hooks."""
    try:
        with one_thread():
            for text in calibration_texts(config):
                ids = tokenizer(text, truncation=True, max_length=config.max_tokens, return_tensors="pt")
                model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def collect_stats(model: nn.Module, tokenizer, inputs: list[nn.Linear], config: CalibrationConfig) -> list[LayerStats]:
    """Run the calibration texts one by one through `model`, hooking the input of each layer's query Linear."""
    accs = [_Accumulator(q.in_features) for q in inputs]
    handles = [q.register_forward_pre_hook(acc) for q, acc in zip(inputs, accs)]
    _run_hooked(model, tokenizer, config, handles)
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
                       None if config.texts_file is None else str(config.texts_file), config.table, config.column])
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def save_stats(stats: list[LayerStats], path: Path) -> None:
    """Store statistics (torch.save of plain tensors)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save([(s.second_moment, s.mean, s.queries) for s in stats], path)


def load_stats(path: Path) -> list[LayerStats]:
    """Read statistics written by save_stats."""
    return [LayerStats(m, mean, queries=q) for m, mean, q in torch.load(path, weights_only=True)]


class _NormedAccumulator:
    """E[u u^T] and E[u] of u = [k^ ; v], and per head E[q^ q^^T], from one layer's k_norm, v_proj and q_norm
    outputs (Qwen3 runs them in the order q_norm, k_norm, v_proj)."""

    def __init__(self, n_kv: int, n_heads: int, head_dim: int) -> None:
        self.width, self.head_dim = n_kv * head_dim, head_dim
        self.u = _Accumulator(2 * self.width)
        self.qq = torch.zeros(n_heads, head_dim, head_dim, dtype=torch.float64)
        self.parts: dict[str, torch.Tensor] = {}

    def hook(self, name: str):
        """A forward hook keeping the module's output as part `name` (k, v or q); v completes a token set."""
        def keep(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            self.parts[name] = output.detach().double()
            if name == "v":
                k, v = self.parts["k"].reshape(-1, self.width), self.parts["v"].reshape(-1, self.width)
                self.u(module, (torch.cat([k, v], -1),))
                q = self.parts["q"].reshape(k.shape[0], -1, self.head_dim)  # [tokens, heads, head_dim]
                self.qq += torch.einsum("thi,thj->hij", q, q)
        return keep

    def result(self) -> LayerStats:
        stats = self.u.result()
        return LayerStats(stats.second_moment, stats.mean, queries=self.qq / self.u.n)


@torch.no_grad()
def collect_normed_stats(model: nn.Module, tokenizer, layers: list[tuple[nn.Module, nn.Module, nn.Module]],
                         n_kv: int, n_heads: int, head_dim: int, config: CalibrationConfig) -> list[LayerStats]:
    """Statistics of normalized keys, values and queries per layer; `layers` holds each layer's
    (k_norm, v_proj, q_norm) modules."""
    accs = [_NormedAccumulator(n_kv, n_heads, head_dim) for _ in layers]
    handles = [module.register_forward_hook(acc.hook(name))
               for acc, modules in zip(accs, layers) for name, module in zip("kvq", modules)]
    _run_hooked(model, tokenizer, config, handles)
    return [acc.result() for acc in accs]
