"""`mlabatch convert`: convert a model to MLA, measure what it cost, register it in MLflow."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import mlflow

from mlabatch.models.conversion.calibration import calibration_texts, heldout_texts
from mlabatch.models.conversion.config import CalibrationConfig, HealConfig, MLAConfig
from mlabatch.models.conversion.convert import convert, resolve_widths
from mlabatch.models.conversion.families import read_source_shape
from mlabatch.models.conversion.fidelity import fidelity_report, write_report
from mlabatch.models.conversion.healing import HELDOUT_WINDOWS, heal
from mlabatch.models.registry.bundled import bundled_minilm_dir
from mlabatch.models.registry.register import register_model
from mlabatch.models.registry.resolve import ResolvedModel
from mlabatch.pipelines.checks import connect_mlflow
from mlabatch.pipelines.errors import CannotRunError
from mlabatch.pipelines.settings import ConvertSettings, Settings

log = logging.getLogger(__name__)


def source_dir(source: str, workdir: Path) -> Path:
    """The Hugging Face directory to convert: a bundled model by name, or the given directory."""
    if source == "minilm":
        return bundled_minilm_dir()
    if source == "smollm2":
        from mlabatch.models.registry.bundled import prepare_smollm2

        return prepare_smollm2(workdir / "smollm2-135m-instruct")
    path = Path(source).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"convert.source {source!r} is neither minilm, smollm2 nor a model directory")
    return path


def mla_config(cfg: ConvertSettings) -> MLAConfig:
    """The conversion request; invalid combinations raise ConversionError before any work."""
    d_c = None if cfg.method == "exact" else cfg.d_c
    return MLAConfig(d_c=d_c, d_rope=cfg.d_rope, method=cfg.method,
                     calibration=CalibrationConfig(num_texts=cfg.calibration_texts,
                                                   max_tokens=cfg.calibration_max_tokens,
                                                   table=cfg.calibration_table, column=cfg.calibration_column))


def check_output_dir(cfg: ConvertSettings) -> None:
    """Stop before any work when output_dir already holds files and convert.overwrite is not set: a model
    there (perhaps the one a generate job loads) must not be replaced silently."""
    out_dir = Path(cfg.output_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not cfg.overwrite:
        raise CannotRunError(
            f"convert.output_dir={cfg.output_dir} already holds files (a converted model?); nothing was "
            "converted. Pick another convert.output_dir, or replace it: --set convert.overwrite=true")


def run_convert(settings: Settings) -> tuple[ResolvedModel, dict]:
    """Convert, write fidelity.json beside the weights, log both to MLflow and register under the alias."""
    cfg = settings.convert
    request = mla_config(cfg)
    check_output_dir(cfg)
    out_dir = Path(cfg.output_dir)
    src = source_dir(cfg.source, out_dir.parent)
    resolve_widths(read_source_shape(src), request)  # a family or width it cannot convert stops before MLflow
    connect_mlflow(settings.mlflow)
    with mlflow.start_run(run_name=f"convert {src.name} -> MLA"):
        mlflow.log_params({"source": str(src), "method": cfg.method, "d_c": cfg.d_c, "d_rope": cfg.d_rope,
                           "calibration_texts": cfg.calibration_texts})
        log.info("converting %s (%s, d_c=%s, d_rope=%s) into %s", src, cfg.method, cfg.d_c, cfg.d_rope, out_dir)
        if cfg.overwrite:
            shutil.rmtree(out_dir, ignore_errors=True)
        convert(src, request, out_dir)
        log.info("measuring fidelity on held-out text")
        report = fidelity_report(src, out_dir)
        if cfg.heal_steps:
            report = heal_converted(src, out_dir, cfg, request, report)
        write_report(report, out_dir / "fidelity.json")
        mlflow.log_dict(report, "fidelity.json")
        mlflow.log_metrics(_metrics(report))
        model = register_model(out_dir, cfg.name, cfg.alias)
    return model, report


def heal_converted(src: Path, out_dir: Path, cfg: ConvertSettings, request: MLAConfig, before: dict) -> dict:
    """Heal the converted model in place from its source, logging the fidelity report before healing and the
    held-out metric per evaluation to MLflow; returns the report after healing, with the steps and tokens.

    A killed run, run again with the same settings (and convert.overwrite=true), converts the same weights and
    resumes from `<output_dir>.heal-checkpoint`, which is removed once healing finishes.
    """
    write_report(before, out_dir / "fidelity-before-healing.json")
    mlflow.log_dict(before, "fidelity-before-healing.json")
    config = HealConfig(**cfg.model_dump(include=set(HealConfig.model_fields)))
    mlflow.log_params(config.model_dump())
    checkpoint = Path(f"{out_dir}.heal-checkpoint")
    log.info("healing: %d distillation steps from %s (checkpoints in %s)", config.heal_steps, src, checkpoint)
    result = heal(src, out_dir, config, calibration_texts(request.calibration), heldout_texts(HELDOUT_WINDOWS),
                  checkpoint_dir=checkpoint)
    for step, value in result.history:
        mlflow.log_metric(f"heal_heldout_{result.metric}", value, step=step)
    shutil.rmtree(checkpoint, ignore_errors=True)
    log.info("measuring fidelity after healing")
    return {**fidelity_report(src, out_dir), "heal_steps": result.steps, "heal_tokens": result.tokens,
            "heal_seconds": round(result.seconds, 3), f"heal_heldout_{result.metric}_before": result.heldout_before,
            f"heal_heldout_{result.metric}_after": result.heldout_after}


def _metrics(report: dict) -> dict[str, float]:
    """The report's numbers as MLflow metrics: pooled under their names, per domain as `<domain>.<name>`."""
    def numbers(d: dict) -> dict[str, float]:
        return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    per_domain = {f"{domain}.{k}": v for domain, d in report["domains"].items() for k, v in numbers(d).items()}
    return {**numbers(report), **per_domain}


def summary(model: ResolvedModel, report: dict, settings: Settings) -> str:
    """What the conversion cost and saved, and how to use the result."""
    cfg = settings.convert
    uri = f"models:/{cfg.name}@{cfg.alias}"
    if "cosine_mean" in report:  # an encoder
        quality = [f"cosine to the original: mean {d['cosine_mean']:.5f}, p1 {d['cosine_p1']:.5f}, "
                   f"min {d['cosine_min']:.5f}" for d in report["domains"].values()]
        use = f"  embed with it     mlabatch embed --set model.uri={uri}"
    else:
        quality = [f"perplexity {d['ppl_original']:.2f} -> {d['ppl_converted']:.2f} (x{d['ppl_ratio']:.3f}), "
                   f"top-1 agreement {d['top1_agreement']:.3f}" for d in report["domains"].values()]
        use = f"  generate with it  mlabatch generate --set generate.model_uri={uri}"
    domains = [f"  {name:<18}{line}" for name, line in zip(report["domains"], quality)]
    return "\n".join([
        f"mlabatch convert: {report['model']} -> MLA ({report['method']}, d_c={report['d_c']}, "
        f"d_rope={report['d_rope']})",
        f"  KV per token      {report['kv_values_per_token_before']} -> {report['kv_values_per_token_after']} "
        f"values per layer ({report['kv_bytes_per_token_before']:,} -> {report['kv_bytes_per_token_after']:,} bytes)",
        "  quality on held-out text, per domain:",
        *domains,
        f"  report            {Path(cfg.output_dir) / 'fidelity.json'} (also in the MLflow run)",
        f"  registered        {model.version} as {uri}",
        use,
    ])
