"""Healing (models/conversion/healing.py) on CPU: the training forward equals the runtime, real lossy conversions
(SmolLM2, MiniLM) heal on held-out text, only attention weights change, and a run resumed from its checkpoint
ends where an uninterrupted run ends."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mlabatch.models.conversion.calibration import calibration_texts, heldout_domains, heldout_texts
from mlabatch.models.conversion.config import CalibrationConfig, HealConfig, MLAConfig
from mlabatch.models.conversion.convert import convert
from mlabatch.models.conversion.fidelity import fidelity_report
from mlabatch.models.conversion import healing
from mlabatch.models.conversion.healing import decoder_logits, encoder_hidden, heal
from mlabatch.models.mla_config import MLAModelConfig, read_converted
from mlabatch.models.mla_decoder import MLADecoder, load_mla_decoder
from mlabatch.models.mla_encoder import MLAEncoder, load_mla_encoder

CALIBRATION = CalibrationConfig(num_texts=8, max_tokens=64)


@pytest.fixture(scope="module")
def lossy_decoder(tiny_decoder_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(source, converted) for the tiny random Llama at d_c 64 + d_rope 64 (exact would be 192 + 64): lossy."""
    src = Path(MLAModelConfig.read(tiny_decoder_dir).conversion["source"])
    out = convert(src, MLAConfig(d_c=64, d_rope=64, calibration=CALIBRATION), tmp_path_factory.mktemp("dec") / "mla")
    return src, out


@pytest.fixture(scope="module")
def lossy_encoder(minilm_dir, tmp_path_factory) -> Path:
    """all-MiniLM-L6-v2 converted at d_c 64 (mean held-out cosine about 0.9)."""
    return convert(minilm_dir, MLAConfig(d_c=64, d_rope=0, calibration=CALIBRATION),
                   tmp_path_factory.mktemp("enc") / "mla")


def _copy(model_dir: Path, tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(model_dir, tmp_path / name))


def test_training_forward_equals_the_runtime(lossy_decoder, lossy_encoder):
    mla, cfg, state = read_converted(lossy_decoder[1], "decoder")
    student = MLADecoder(cfg, mla)
    student.load_state_dict({**state, "lm_head.weight": state["embed_tokens.weight"]})
    ids = torch.randint(3, 1000, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = decoder_logits(student, ids)
    torch.testing.assert_close(ours, load_mla_decoder(lossy_decoder[1])(ids), rtol=1e-4, atol=1e-4)

    mla, cfg, state = read_converted(lossy_encoder, "encoder")
    student = MLAEncoder(cfg, mla)
    student.load_state_dict(state)
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, 25:] = 0
    with torch.no_grad():
        ours = encoder_hidden(student, ids, mask)
    want = load_mla_encoder(lossy_encoder)(ids, mask)
    torch.testing.assert_close(ours[mask.bool()], want[mask.bool()], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family, widths", [("llama", (256, 64)), ("qwen3", (128, 256)), ("qwen3", (256, 64)),
                                           ("roberta", (128, 0))])
def test_training_forward_equals_the_runtime_for_other_families(family, widths, tmp_path):
    """RoPE in fewer dims than a head (128-wide Llama heads at 256+64), Qwen3's per-head q/k norm (keys kept, and
    keys compressed: the norms run on the pre-projection), RoBERTa positions."""
    from mlabatch.models.conversion.tiny_models import build_tiny

    layout = {"hidden_size": 512, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 128}
    src = build_tiny(family, tmp_path / "src", **({} if family == "roberta" else layout))
    d_c, d_rope = widths
    out = convert(src, MLAConfig(d_c=d_c, d_rope=d_rope, method="svd"), tmp_path / "mla")
    kind = MLAModelConfig.read(out).kind
    mla, cfg, state = read_converted(out, kind)
    ids = torch.randint(3, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    if kind == "decoder":
        student = MLADecoder(cfg, mla)
        student.load_state_dict({**state, "lm_head.weight": state["embed_tokens.weight"]} if mla.tie_word_embeddings
                                else state)
        with torch.no_grad():
            ours = decoder_logits(student, ids)
        torch.testing.assert_close(ours, load_mla_decoder(out)(ids), rtol=1e-4, atol=1e-4)
    else:
        student = MLAEncoder(cfg, mla)
        student.load_state_dict(state)
        mask = torch.ones_like(ids)
        with torch.no_grad():
            ours = encoder_hidden(student, ids, mask)
        torch.testing.assert_close(ours, load_mla_encoder(out)(ids, mask), rtol=1e-4, atol=1e-4)


def _prose() -> tuple[list[str], list[str]]:
    """(training, held-out) English prose: the reference-docs topics, the held-out ones those fidelity reports use."""
    from pydoc_data.topics import topics

    held = heldout_domains(CalibrationConfig(), 8)["english-prose"]
    train = [t.strip() for _, t in sorted(topics.items()) if len(t.strip()) > 400 and t.strip() not in held]
    return train, held


def test_smollm2_heals_on_held_out_text(smollm2_dir, tmp_path):
    """The real SmolLM2 at 128+64: a few distillation steps on prose lower the KL and the perplexity ratio on
    held-out prose."""
    train, held = _prose()
    mla_dir = convert(smollm2_dir, MLAConfig(d_c=128, d_rope=64, calibration=CALIBRATION), tmp_path / "mla",
                      stats_cache=tmp_path / "stats")
    before = fidelity_report(smollm2_dir, mla_dir, num_texts=4, max_tokens=128, greedy_prompts=1, greedy_tokens=4)
    config = HealConfig(heal_steps=10, heal_batch=2, heal_seq_tokens=128, heal_eval_every=5)
    result = heal(smollm2_dir, mla_dir, config, train, held, device="cpu", progress=False)
    after = fidelity_report(smollm2_dir, mla_dir, num_texts=4, max_tokens=128, greedy_prompts=1, greedy_tokens=4)

    assert result.metric == "kl" and result.steps == 10 and result.tokens == 10 * 2 * 128
    assert result.heldout_after < 0.95 * result.heldout_before, result
    ratio = [r["domains"]["english-prose"]["ppl_ratio"] for r in (before, after)]
    assert ratio[1] < ratio[0], ratio
    record = json.loads((mla_dir / "mla_config.json").read_text())["conversion"]["healing"]
    assert record["heal_steps"] == 10 and record["tokens"] == result.tokens


def test_encoder_heals(lossy_encoder, minilm_dir, tmp_path):
    """all-MiniLM-L6-v2 at d_c 64: distillation on prose raises the embeddings' cosine on held-out prose."""
    train, held = _prose()
    mla_dir = _copy(lossy_encoder, tmp_path, "mla")
    before = fidelity_report(minilm_dir, mla_dir, num_texts=8, max_tokens=64)
    config = HealConfig(heal_steps=12, heal_lr=1e-4, heal_batch=4, heal_seq_tokens=64, heal_eval_every=6)
    result = heal(minilm_dir, mla_dir, config, train, held, device="cpu", progress=False)
    after = fidelity_report(minilm_dir, mla_dir, num_texts=8, max_tokens=64)
    assert result.metric == "cosine" and result.heldout_after > result.heldout_before, result
    cosine = [r["domains"]["english-prose"]["cosine_mean"] for r in (before, after)]
    assert cosine[1] > cosine[0], cosine


def test_resume_from_a_checkpoint_continues_the_run(lossy_decoder, tmp_path, monkeypatch):
    src, converted = lossy_decoder
    texts, held = calibration_texts(CALIBRATION), heldout_texts(2)
    config = HealConfig(heal_steps=6, heal_lr=1e-3, heal_batch=2, heal_seq_tokens=32, heal_eval_every=3)
    straight = _copy(converted, tmp_path, "straight")
    heal(src, straight, config, texts, held, device="cpu", progress=False)

    resumed, ckpt = _copy(converted, tmp_path, "resumed"), tmp_path / "ckpt"
    lr_share = healing._lr_share

    def crash_at_step_4(step: int, steps: int) -> float:
        if step == 4:
            raise KeyboardInterrupt("killed during step 5")
        return lr_share(step, steps)

    monkeypatch.setattr(healing, "_lr_share", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        heal(src, resumed, config, texts, held, checkpoint_dir=ckpt, device="cpu", progress=False)
    monkeypatch.undo()
    assert torch.load(ckpt / healing.CHECKPOINT_FILE, weights_only=True)["step"] == 3
    result = heal(src, resumed, config, texts, held, checkpoint_dir=ckpt, device="cpu", progress=False)

    assert result.resumed_from == 3 and result.steps == 6 and result.tokens == 6 * 2 * 32
    assert [s for s, _ in result.history] == [3, 6]
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    start = load_file(str(converted / "model.safetensors"))
    assert a.keys() == start.keys()
    changed = {k for k in a if not torch.equal(a[k], start[k])}
    assert changed and all(".attn." in k for k in changed)  # embeddings, norms, MLPs and the head stay frozen
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_convert_job_heals_and_logs_both_reports(tmp_path):
    import mlflow

    from mlabatch.jobs.config import load_settings
    from mlabatch.jobs.convert import run_convert

    out = tmp_path / "minilm-mla"
    settings = load_settings([], [f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                                  f"mlflow.artifact_location={tmp_path}/artifacts", f"convert.output_dir={out}",
                                  "convert.d_c=64", "convert.calibration_texts=8", "convert.calibration_max_tokens=64",
                                  "convert.heal_steps=6", "convert.heal_lr=5e-4", "convert.heal_batch=4",
                                  "convert.heal_seq_tokens=64", "convert.heal_eval_every=3"])
    _, report = run_convert(settings)

    before = json.loads((out / "fidelity-before-healing.json").read_text())
    assert "heal_steps" not in before and report["heal_steps"] == 6 and report["heal_tokens"] > 0
    assert report["cosine_mean"] != before["cosine_mean"]  # the report after healing measures the healed weights
    assert json.loads((out / "fidelity.json").read_text()) == report
    assert not Path(f"{out}.heal-checkpoint").exists()  # removed once healing finished
    run = mlflow.search_runs(experiment_names=["mlabatch"], output_format="list")[0]
    assert run.data.params["heal_steps"] == "6" and run.data.metrics["heal_steps"] == 6
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "heal_heldout_cosine")
    assert [m.step for m in history] == [3, 6]
    logged = json.loads(open(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="fidelity-before-healing.json")).read())
    assert logged == before
