"""Models in a real MLflow sqlite registry: register, resolve by alias, load as pyfunc, fail clearly."""
import numpy as np
import pandas as pd
import pytest

from mlabatch.jobs.config import load_settings
from mlabatch.models.registry.load import load_model
from mlabatch.models.registry.resolve import ModelNotFoundError, resolve_model
from mlabatch.pipelines.tracking import configure_mlflow


@pytest.fixture()
def registry(tmp_path):
    settings = load_settings([], [f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                                  f"mlflow.registry_uri=sqlite:///{tmp_path}/mlflow.db",
                                  f"mlflow.artifact_location={tmp_path}/artifacts"])
    configure_mlflow(settings.mlflow)
    return settings


def test_prepare_registers_alias_and_pyfunc_predicts(registry, embedder):
    import mlflow

    from mlabatch.jobs.models import alias_exists, prepare

    assert not alias_exists("mlabatch-minilm", "champion")
    model = prepare(registry)
    assert alias_exists("mlabatch-minilm", "champion")
    assert model.version == "mlabatch-minilm/1"
    assert (model.local_dir / "model.safetensors").exists()

    pyfunc = mlflow.pyfunc.load_model("models:/mlabatch-minilm@champion")
    assert [c.name for c in pyfunc.metadata.get_input_schema().inputs] == ["text"]
    assert [c.name for c in pyfunc.metadata.get_output_schema().inputs] == ["embedding"]
    out = pyfunc.predict(pd.DataFrame({"text": ["hello there", "general kenobi"]}))
    np.testing.assert_allclose(np.stack(out["embedding"]), embedder.embed(["hello there", "general kenobi"]),
                               atol=1e-5)

    again = prepare(registry)  # a second prepare is a new version, and the alias follows it
    assert again.version == "mlabatch-minilm/2"
    loaded = load_model("models:/mlabatch-minilm@champion", "cpu")
    np.testing.assert_allclose(loaded.embed(["x y z"]), embedder.embed(["x y z"]), atol=1e-6)


def test_unresolvable_uri_names_the_fix(registry):
    with pytest.raises(ModelNotFoundError, match="mlabatch models prepare"):
        resolve_model("models:/no-such-model@champion")
    with pytest.raises(ModelNotFoundError, match="alias"):
        resolve_model("models:/no-such-model")
