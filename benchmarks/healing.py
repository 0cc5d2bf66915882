"""Healing on CPU: fidelity of converted SmolLM2 (128+64, 64+64) and MiniLM (d_c 128) before and after a short
distillation from the original (`models/conversion/healing.py`).

Each run converts (pca, calibrated), writes the fidelity report as a row with heal_steps 0, heals, and writes the
report again with the steps and tokens trained. Rows are appended to benchmarks/results/conversion-cpu.jsonl with
the fields of benchmarks/conversion.py plus heal_steps, heal_tokens, heal_seconds, heal_lr, heal_texts (training
texts) and the held-out distillation metric before and after. Training and evaluation text are disjoint
(`calibration.py`). Run:

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/healing.py
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from conversion import RESULTS, _minilm_dir, _row  # benchmarks/conversion.py, beside this script

from mlabatch.models.conversion.calibration import calibration_texts, heldout_texts
from mlabatch.models.conversion.config import CalibrationConfig, HealConfig, MLAConfig
from mlabatch.models.conversion.convert import convert
from mlabatch.models.conversion.fidelity import fidelity_report
from mlabatch.models.conversion.healing import heal
from mlabatch.models.registry.bundled import prepare_smollm2

SMOLLM2, MINILM = "SmolLM2-135M-Instruct", "all-MiniLM-L6-v2"
ALL_TEXTS = 10_000  # more than the offline domains' calibration parts hold (248 texts): all of them


def runs(steps_128: int, steps_64: int, steps_minilm: int,
         texts: int) -> list[tuple[str, MLAConfig, HealConfig, CalibrationConfig]]:
    """(model, conversion, healing, healing's training text) of each measured run."""
    calib = CalibrationConfig(num_texts=texts)
    return [
        (SMOLLM2, MLAConfig(d_c=128, d_rope=64, calibration=calib),
         HealConfig(heal_steps=steps_128, heal_batch=2, heal_seq_tokens=256, heal_eval_every=10), calib),
        (SMOLLM2, MLAConfig(d_c=64, d_rope=64, calibration=calib),
         HealConfig(heal_steps=steps_64, heal_batch=2, heal_seq_tokens=256, heal_eval_every=10), calib),
        # MiniLM trains on every offline calibration text (it overfits few) at the evaluation's 256 tokens;
        # 1e-4 was the best peak rate of 1e-4, 3e-4, 1e-3 and 3e-3 (higher ones lose fidelity first, then recover)
        (MINILM, MLAConfig(d_c=128, d_rope=0, calibration=calib),
         HealConfig(heal_steps=steps_minilm, heal_lr=1e-4, heal_batch=8, heal_seq_tokens=256, heal_eval_every=50),
         CalibrationConfig(num_texts=ALL_TEXTS)),
    ]


def main() -> None:
    """Convert, measure, heal and measure again; append one row before and one after healing per run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps-128", type=int, default=100, help="healing steps of SmolLM2 at 128+64")
    parser.add_argument("--steps-64", type=int, default=30, help="healing steps of SmolLM2 at 64+64")
    parser.add_argument("--steps-minilm", type=int, default=400, help="healing steps of MiniLM at d_c 128")
    parser.add_argument("--texts", type=int, default=64, help="calibration texts (SmolLM2's healing text too)")
    parser.add_argument("--eval-texts", type=int, default=16, help="held-out texts")
    parser.add_argument("--only", choices=[SMOLLM2, MINILM], help="run one model's rows")
    parser.add_argument("--out", type=Path, default=RESULTS / "conversion-cpu.jsonl")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mla-heal-"))
    sources = {MINILM: _minilm_dir, SMOLLM2: lambda: prepare_smollm2(work / "smollm2")}  # built when first needed
    for i, (model, config, heal_config, heal_text) in enumerate(runs(args.steps_128, args.steps_64, args.steps_minilm,
                                                                     args.texts)):
        if args.only not in (None, model):
            continue
        src = sources[model]()
        mla_dir = convert(src, config, work / f"mla-{i}", stats_cache=work / "stats")

        def row(extra: dict) -> dict:
            report = fidelity_report(src, mla_dir, num_texts=args.eval_texts, greedy_prompts=2, greedy_tokens=16)
            domains = {"domains": report["domains"]} if "domains" in report else {}  # per-domain held-out quality
            out = {**_row(model, report), **domains, **extra}
            print(json.dumps(out), flush=True)
            with args.out.open("a") as f:
                f.write(json.dumps(out) + "\n")
            return out

        row({"heal_steps": 0, "heal_tokens": 0})
        texts = calibration_texts(heal_text)
        result = heal(src, mla_dir, heal_config, texts, heldout_texts(args.eval_texts), device="cpu")
        row({"heal_steps": result.steps, "heal_tokens": result.tokens, "heal_seconds": round(result.seconds, 1),
             "heal_lr": heal_config.heal_lr, "heal_batch": heal_config.heal_batch,
             "heal_seq_tokens": heal_config.heal_seq_tokens, "heal_texts": len(texts), "heal_metric": result.metric,
             "heal_heldout_before": result.heldout_before, "heal_heldout_after": result.heldout_after})


if __name__ == "__main__":
    torch.set_num_threads(1)  # a shared CPU: threads slow a busy 2-core machine down (linalg.one_thread)
    main()
