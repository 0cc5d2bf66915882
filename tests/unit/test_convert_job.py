"""`mlabatch convert`: convert, report, log to MLflow, register; the alias then embeds like the original."""
import json

import mlflow
import numpy as np
import pytest

from mlabatch.jobs.config import load_settings
from mlabatch.jobs.convert import run_convert, summary
from mlabatch.models.conversion.config import ConversionError
from mlabatch.models.registry.load import load_model


@pytest.fixture()
def settings(tmp_path):
    def make(*overrides):
        return load_settings([], [f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                                  f"mlflow.registry_uri=sqlite:///{tmp_path}/mlflow.db",
                                  f"mlflow.artifact_location={tmp_path}/artifacts",
                                  f"convert.output_dir={tmp_path}/minilm-mla", *overrides])
    return make


def test_exact_conversion_is_registered_reported_and_embeds_like_the_original(settings, embedder):
    cfg = settings("convert.method=exact", "convert.name=minilm-mla", "convert.alias=exact")
    model, report = run_convert(cfg)

    assert model.version == "minilm-mla/1"
    assert (model.local_dir / "mla_config.json").exists()
    assert report["kv_values_per_token_before"] == 768 and report["kv_values_per_token_after"] == 384
    assert report["cosine_min"] >= 0.99999

    run = mlflow.search_runs(experiment_names=["mlabatch"], output_format="list")[0]
    assert run.data.metrics["cosine_mean"] == pytest.approx(report["cosine_mean"])
    logged = json.loads(open(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                                  artifact_path="fidelity.json")).read())
    assert logged == report

    texts = ["Multi-head latent attention caches one latent per token.", "Grüße 🚀", "x " * 400]
    converted = load_model("models:/minilm-mla@exact", "cpu").embed(texts)
    original = embedder.embed(texts)
    assert ((converted * original).sum(1)).min() >= 0.99999  # both are unit vectors

    text = summary(model, report, cfg)
    assert "768 -> 384" in text and "models:/minilm-mla@exact" in text


def test_impossible_request_fails_before_any_work(settings, tmp_path):
    with pytest.raises(ConversionError, match="exact"):
        run_convert(settings("convert.d_c=999"))
    assert not (tmp_path / "minilm-mla").exists()
