"""Models in a real MLflow sqlite registry: register, resolve by alias, load as pyfunc, fail clearly."""
import numpy as np
import pandas as pd
import pytest

from mlabatch.jobs.config import load_settings
from mlabatch.models.registry.load import load_model
from mlabatch.models.registry.resolve import MlflowStores, ModelNotFoundError, resolve_model
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
    assert [c.name for c in pyfunc.metadata.get_output_schema().inputs] == [
        "embedding", "token_count", "truncated", "error"]
    out = pyfunc.predict(pd.DataFrame({"text": ["hello there", "general kenobi", "", " \u200b", None]}))
    np.testing.assert_allclose(np.stack(out["embedding"][:2]), embedder.embed(["hello there", "general kenobi"]),
                               atol=1e-5)
    assert list(out["error"]) == [None, None, "text is empty or whitespace", "text is empty or whitespace",
                                  "text is null"]  # the rules of embed_udf: an error, never a vector
    assert list(out["embedding"][2:]) == [None, None, None] and list(out["token_count"][2:]) == [0, 0, 0]
    assert all(out["token_count"][:2] > 0) and not any(out["truncated"])

    again = prepare(registry)  # a second prepare is a new version, and the alias follows it
    assert again.version == "mlabatch-minilm/2"
    loaded = load_model("models:/mlabatch-minilm@champion", "cpu")
    np.testing.assert_allclose(loaded.embed(["x y z"]), embedder.embed(["x y z"]), atol=1e-6)


def test_unresolvable_uri_names_the_fix(registry):
    with pytest.raises(ModelNotFoundError, match="mlabatch models prepare"):
        resolve_model("models:/no-such-model@champion")
    with pytest.raises(ModelNotFoundError, match="alias"):
        resolve_model("models:/no-such-model")


def test_resolution_uses_the_stores_it_is_handed(registry, tmp_path, monkeypatch):
    """A Spark worker's MLflow globals are not the driver's: resolving must read only the stores passed
    in, and an unresolved URI names the registry searched and where the URI was set."""
    import mlflow

    from mlabatch.jobs.models import prepare

    prepare(registry)
    driver = MlflowStores.current()
    worker_dir = tmp_path / "worker"
    worker_dir.mkdir()
    monkeypatch.chdir(worker_dir)
    elsewhere = f"sqlite:///{tmp_path}/elsewhere.db"  # this process's MLflow globals now point elsewhere
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", elsewhere)
    monkeypatch.setattr(mlflow.tracking._model_registry.utils, "_registry_uri", elsewhere)

    model = resolve_model("models:/mlabatch-minilm@champion", driver)
    assert model.version == "mlabatch-minilm/1" and (model.local_dir / "model.safetensors").exists()
    assert list(worker_dir.iterdir()) == []  # no ./mlflow.db, no ./mlruns

    with pytest.raises(ModelNotFoundError) as err:
        resolve_model("models:/mlabatch-minilm@champion", setting="generate.model_uri")
    assert f"registry at {elsewhere}" in str(err.value) and "(generate.model_uri)" in str(err.value)
    assert "mlflow.set_registry_uri" in str(err.value) and "mlflow.registry_uri" in str(err.value)


def test_stores_name_sqlite_files_by_absolute_path(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", "sqlite:///data/mlflow.db")
    monkeypatch.setattr(mlflow.tracking._model_registry.utils, "_registry_uri", None)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)  # the registry follows the tracking URI
    assert MlflowStores.current() == MlflowStores(registry_uri=f"sqlite:///{tmp_path}/data/mlflow.db",
                                                  tracking_uri=f"sqlite:///{tmp_path}/data/mlflow.db")


def test_load_model_gives_an_unconverted_decoder_the_generator(tiny_decoder_dir):
    """A plain Hugging Face decoder directory is served by the generation engine (converted exactly in
    memory), not handed to the embedder."""
    from mlabatch.models.generation.config import EngineConfig, SamplingParams
    from mlabatch.models.generation.engine import Generator
    from mlabatch.models.registry.load import load_model

    original = tiny_decoder_dir.with_name("tiny-llama-v1")  # the directory tiny_decoder_dir was converted from
    model = load_model(original, "cpu", engine=EngineConfig(num_blocks=16))
    assert isinstance(model, Generator)
    (out,) = model.generate(["one two three"], SamplingParams(max_new_tokens=4, ignore_eos=True))
    assert out.generated_tokens == 4
