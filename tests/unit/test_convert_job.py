"""`mlabatch convert`: convert, report, log to MLflow, register; the alias then embeds like the original."""
import json
import stat
from pathlib import Path

import mlflow
import pytest

from mlabatch.jobs.config import load_settings
from mlabatch.jobs.convert import run_convert, summary
from mlabatch.models.conversion.config import ConversionError
from mlabatch.models.registry.resolve import ResolvedModel
from mlabatch.models.registry.load import load_model
from mlabatch.pipelines.errors import CannotRunError


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
    assert set(report["domains"]) == {"english-prose", "code", "cjk-prose"}  # never only the calibration domain
    assert all(d["cosine_min"] >= 0.99999 and d["n_texts"] >= 4 for d in report["domains"].values())

    run = mlflow.search_runs(experiment_names=["mlabatch"], output_format="list")[0]
    assert run.data.metrics["cosine_mean"] == pytest.approx(report["cosine_mean"])
    assert run.data.metrics["cjk-prose.cosine_p1"] == pytest.approx(report["domains"]["cjk-prose"]["cosine_p1"])
    logged = json.loads(open(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                                  artifact_path="fidelity.json")).read())
    assert logged == report

    texts = ["Multi-head latent attention caches one latent per token.", "Grüße 🚀", "x " * 400]
    converted = load_model("models:/minilm-mla@exact", "cpu").embed(texts)
    original = embedder.embed(texts)
    assert ((converted * original).sum(1)).min() >= 0.99999  # both are unit vectors

    text = summary(model, report, cfg)
    assert "768 -> 384" in text and "mlabatch embed --set model.uri=models:/minilm-mla@exact" in text
    assert "  code  " in text and "p1 " in text
    weights = Path(cfg.convert.output_dir) / "model.safetensors"
    assert stat.S_IMODE(weights.stat().st_mode) == 0o644  # readable like the other files, not 0600


def test_a_second_conversion_into_the_same_directory_stops_unless_told_to_overwrite(settings, tmp_path):
    out = tmp_path / "minilm-mla"
    out.mkdir()
    (out / "model.safetensors").write_text("the first model")
    with pytest.raises(CannotRunError, match=r"convert.output_dir=.*--set convert.overwrite=true"):
        run_convert(settings("convert.method=exact"))
    assert (out / "model.safetensors").read_text() == "the first model"
    assert not (tmp_path / "mlflow.db").exists()  # stopped before MLflow, let alone a conversion

    model, _ = run_convert(settings("convert.method=exact", "convert.overwrite=true"))
    assert (out / "mla_config.json").is_file() and (model.local_dir / "mla_config.json").is_file()


def test_a_converted_decoder_is_pointed_at_generate(settings):
    report = {"model": "smollm2", "method": "exact", "d_c": 512, "d_rope": 64, "kv_values_per_token_before": 640,
              "kv_values_per_token_after": 576, "kv_bytes_per_token_before": 1280, "kv_bytes_per_token_after": 1152,
              "ppl_original": 10.0, "ppl_converted": 10.0, "top1_agreement": 1.0,
              "domains": {"code": {"ppl_original": 10.0, "ppl_converted": 11.0, "ppl_ratio": 1.1,
                                   "top1_agreement": 0.9}}}
    cfg = settings("convert.name=smollm2-mla")
    model = ResolvedModel(uri="models:/smollm2-mla@champion", local_dir=Path("."), version="smollm2-mla/1")
    text = summary(model, report, cfg)
    assert "mlabatch generate --set generate.model_uri=models:/smollm2-mla@champion" in text
    assert "mlabatch embed" not in text
    assert "code" in text and "10.00 -> 11.00 (x1.100)" in text


def test_impossible_request_fails_before_any_work(settings, tmp_path):
    with pytest.raises(ConversionError, match="exact"):
        run_convert(settings("convert.d_c=999"))
    assert not (tmp_path / "minilm-mla").exists()


def test_a_refused_family_stops_before_mlflow(settings, tmp_path):
    src = tmp_path / "mpnet"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "mpnet"}))
    with pytest.raises(ConversionError, match="relative-position bias"):
        run_convert(settings(f"convert.source={src}"))
    assert not (tmp_path / "mlflow.db").exists()


def test_calibration_on_the_users_table_from_the_settings(settings, tmp_path):
    """convert.calibration_table / calibration_column reach the conversion: the user's table is calibrated on
    and reported as a held-out domain of its own."""
    import pyarrow as pa
    from deltalake import write_deltalake
    from pydoc_data.topics import topics

    table = tmp_path / "docs"
    texts = [t[:800] for t in list(topics.values())[:60]]
    write_deltalake(str(table), pa.table({"id": list(range(len(texts))), "body": texts}))
    cfg = settings("convert.method=pca", "convert.d_c=192", "convert.calibration_texts=16",
                   f"convert.calibration_table={table}", "convert.calibration_column=body")
    _, report = run_convert(cfg)
    assert "table" in report["domains"] and report["domains"]["table"]["n_texts"] >= 1

    with pytest.raises(ConversionError, match="no column 'text'"):
        run_convert(settings("convert.method=pca", f"convert.calibration_table={table}",
                             f"convert.output_dir={tmp_path}/other"))
