"""Bad conversion requests fail before any work, with messages naming what is supported."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlabatch.models.conversion.config import CalibrationConfig, ConversionError, MLAConfig
from mlabatch.models.conversion.convert import convert

LLAMA = {"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 2, "num_attention_heads": 9,
         "num_key_value_heads": 3, "head_dim": 64}
BERT = {"model_type": "bert", "hidden_size": 384, "num_hidden_layers": 2, "num_attention_heads": 12}


def _model_dir(tmp_path: Path, config: dict, weights: bool = True) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(config))
    if weights:
        (tmp_path / "model.safetensors").write_bytes(b"not loaded: validation comes first")
    return tmp_path


def test_unsupported_architecture_names_supported(tmp_path):
    with pytest.raises(ConversionError, match=r"'gpt2' is not supported.*bert.*roberta.*distilbert.*llama.*qwen2"):
        convert(_model_dir(tmp_path, {"model_type": "gpt2"}), MLAConfig(method="exact"), tmp_path / "out")


def test_dir_without_weights(tmp_path):
    with pytest.raises(ConversionError, match="has no weights"):
        convert(_model_dir(tmp_path, LLAMA, weights=False), MLAConfig(method="exact"), tmp_path / "out")


def test_dir_without_config(tmp_path):
    with pytest.raises(ConversionError, match="no config.json"):
        convert(tmp_path, MLAConfig(method="exact"), tmp_path / "out")


def test_rank_larger_than_exact(tmp_path):
    with pytest.raises(ConversionError, match=r"larger than exact \(320\)"):
        convert(_model_dir(tmp_path, LLAMA), MLAConfig(d_c=384, d_rope=64, method="svd"), tmp_path / "out")
    with pytest.raises(ConversionError, match=r"larger than exact \(384\)"):
        convert(_model_dir(tmp_path, BERT), MLAConfig(d_c=400, d_rope=0, method="svd"), tmp_path / "out")


def test_rank_not_allowed_by_kernel(tmp_path):
    with pytest.raises(ConversionError, match=r"not supported by the decode kernel.*\(128, 192, 256, 384, 512\)"):
        convert(_model_dir(tmp_path, LLAMA), MLAConfig(d_c=100, d_rope=64, method="svd"), tmp_path / "out")


def test_bad_d_rope(tmp_path):
    with pytest.raises(ConversionError, match=r"even value below 64.*or a multiple of 64 up to 192"):
        convert(_model_dir(tmp_path, LLAMA), MLAConfig(d_c=128, d_rope=96, method="svd"), tmp_path / "out")
    with pytest.raises(ConversionError, match="has no RoPE"):
        convert(_model_dir(tmp_path, BERT), MLAConfig(d_c=128, d_rope=64, method="svd"), tmp_path / "out")


def test_exact_with_lossy_widths(tmp_path):
    with pytest.raises(ConversionError, match="'exact' needs d_c=192 and d_rope=192"):
        convert(_model_dir(tmp_path, LLAMA), MLAConfig(d_c=128, d_rope=64, method="exact"), tmp_path / "out")


def test_missing_calibration_file(tmp_path):
    with pytest.raises(ConversionError, match="calibration file .* does not exist"):
        MLAConfig(d_c=128, calibration=CalibrationConfig(texts_file=tmp_path / "missing.txt"))


def test_unknown_method_and_missing_width():
    with pytest.raises(ConversionError, match="not one of"):
        MLAConfig(d_c=128, method="random")
    with pytest.raises(ConversionError, match="needs d_c"):
        MLAConfig(method="pca")
