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
    assert list(out["generated_tokens"]) == [o.generated_tokens for o in expected]
    assert list(out["finish_reason"]) == [o.finish_reason for o in expected]
    assert list(out["prompt_tokens"]) == [o.prompt_tokens for o in expected] and out["error"].isna().all()


def test_decoder_pyfunc_returns_the_udf_columns_and_error_rows(tmp_path, tiny_decoder_dir):
    settings = load_settings([], [f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                                  f"mlflow.registry_uri=sqlite:///{tmp_path}/mlflow.db",
                                  f"mlflow.artifact_location={tmp_path}/artifacts"])
    configure_mlflow(settings.mlflow)
    register_model(tiny_decoder_dir, "tiny-mla", "champion")
    pyfunc = mlflow.pyfunc.load_model("models:/tiny-mla@champion")
    assert [c.name for c in pyfunc.metadata.get_output_schema().inputs] == [
        "text", "prompt_tokens", "generated_tokens", "finish_reason", "truncated", "error"]
    assert {p.name for p in pyfunc.metadata.get_params_schema().params} == {
        "max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop"}

    prompts = ["Once upon a time", "", None]
    out = pyfunc.predict(pd.DataFrame({"prompt": prompts}),
                         params={"max_new_tokens": 6, "temperature": 0.8, "seed": 3, "stop": ["zzz"]})
    sampling = SamplingParams(max_new_tokens=6, temperature=0.8, seed=3, stop=("zzz",))
    expected = load_generator(tiny_decoder_dir, "cpu").generate(prompts[:1], sampling)
    assert out["text"][0] == expected[0].text and out["error"][0] is None
    assert list(out["error"][1:]) == ["prompt is empty or whitespace", "prompt is null"]
    assert list(out["text"][1:]) == [None, None] and list(out["generated_tokens"][1:]) == [0, 0]
