"""A converted decoder registers as a pyfunc whose predict runs the generation engine."""
import mlflow
import pandas as pd

from mlabatch.jobs.config import load_settings
from mlabatch.models.generation.config import SamplingParams
from mlabatch.models.generation.engine import load_generator
from mlabatch.models.registry.register import register_model
from mlabatch.pipelines.tracking import configure_mlflow


def test_decoder_pyfunc_generates_like_the_engine(tmp_path, tiny_decoder_dir):
    settings = load_settings([], [f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                                  f"mlflow.registry_uri=sqlite:///{tmp_path}/mlflow.db",
                                  f"mlflow.artifact_location={tmp_path}/artifacts"])
    configure_mlflow(settings.mlflow)
    model = register_model(tiny_decoder_dir, "tiny-mla", "champion")
    assert model.version == "tiny-mla/1"

    pyfunc = mlflow.pyfunc.load_model("models:/tiny-mla@champion")
    assert [c.name for c in pyfunc.metadata.get_input_schema().inputs] == ["prompt"]
    prompts = ["Once upon a time", "The capital of France is"]
    out = pyfunc.predict(pd.DataFrame({"prompt": prompts}), params={"max_new_tokens": 8})
    expected = load_generator(tiny_decoder_dir, "cpu").generate(prompts, SamplingParams(max_new_tokens=8))
    assert list(out["text"]) == [o.text for o in expected]
    assert all(0 < o.generated_tokens <= 8 for o in expected)  # the pyfunc honoured max_new_tokens=8
