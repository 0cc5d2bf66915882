"""The generation engine on CPU: exactness against transformers, scheduling under a small pool, sampling, stops."""
from __future__ import annotations

import shutil

import pytest
import torch
from pydoc_data.topics import topics

from mlabatch.models.generation.config import EngineConfig, SamplingParams
from mlabatch.models.generation.engine import Generator
from mlabatch.models.generation.sampling import gumbel_noise, sample
from mlabatch.models.mla_decoder import load_mla_decoder
from mlabatch.models.tokenizer import load_tokenizer

GREEDY = SamplingParams(max_new_tokens=40, ignore_eos=True)


@pytest.fixture(scope="module")
def smollm2_mla(smollm2_dir, model_cache_dir):
    """SmolLM2 converted with the exact lift, cached between runs."""
    from mlabatch.models.conversion.convert import convert
    from mlabatch.models.conversion.config import MLAConfig

    out = model_cache_dir / "smollm2-mla-exact-v1"
    if not (out / "mla_config.json").is_file():
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        convert(smollm2_dir, MLAConfig(method="exact"), tmp)
        tmp.rename(out)
    return out


@pytest.fixture(scope="module")
def tiny(tiny_decoder_dir):
    """(model, tokenizer, dir) of the tiny random decoder (context 256)."""
    return load_mla_decoder(tiny_decoder_dir), load_tokenizer(tiny_decoder_dir), tiny_decoder_dir


def _engine(tiny, **config) -> Generator:
    model, tokenizer, model_dir = tiny
    return Generator(model, tokenizer, model_dir, EngineConfig(**config))


def _prompts(lengths: list[int]) -> list[list[int]]:
    return [list(range(300 + 7 * i, 300 + 7 * i + n)) for i, n in enumerate(lengths)]


def test_greedy_equals_transformers_generate_on_smollm2(smollm2_dir, smollm2_mla):
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(smollm2_mla)
    texts = [topics["if"], topics["for"], topics["while"]]
    prompts = [tokenizer.encode(t).ids[:n] for t, n in zip(texts, (7, 29, 71))]
    ref_model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    ref = [ref_model.generate(torch.tensor([p]), max_new_tokens=32, min_new_tokens=32, do_sample=False)[0, len(p):]
           .tolist() for p in prompts]
    engine = Generator(load_mla_decoder(smollm2_mla), tokenizer, smollm2_mla, EngineConfig(num_blocks=16))
    outs = engine.generate(prompts, SamplingParams(max_new_tokens=32, ignore_eos=True))
    assert [o.token_ids for o in outs] == ref
    assert engine.stats.batch_sizes[0] == 3  # one decode batch, not three
    assert all(o.finish_reason == "length" and o.generated_tokens == 32 for o in outs)
    assert [o.prompt_tokens for o in outs] == [7, 29, 71]


def test_chat_template_and_eos(smollm2_mla):
    from transformers import AutoTokenizer

    engine = Generator(load_mla_decoder(smollm2_mla), load_tokenizer(smollm2_mla), smollm2_mla,
                       EngineConfig(num_blocks=8, chat_template=True))
    out = engine.generate(["What is the capital of France?"], SamplingParams(max_new_tokens=48))[0]
    hf = AutoTokenizer.from_pretrained(smollm2_mla)
    expected = hf.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                      tokenize=True, add_generation_prompt=True)
    expected = expected["input_ids"] if hasattr(expected, "keys") else expected
    assert out.prompt_tokens == len(expected)
    assert out.finish_reason == "eos" and out.token_ids[-1] == 2
    assert "Paris" in out.text and "<|im_end|>" not in out.text


def test_more_prompts_than_the_cache_holds_all_finish_exactly(tiny):
    prompts = _prompts([60, 62, 5, 30, 70, 20, 64, 10, 45, 3])  # the first two outgrow the pool together
    alone = _engine(tiny, num_blocks=64)
    want = [alone.generate([p], GREEDY)[0].token_ids for p in prompts]
    small = _engine(tiny, num_blocks=4, max_batch=8)  # 3 usable blocks: 192 tokens for 8 prompts
    outs = small.generate(prompts, GREEDY)
    assert [o.token_ids for o in outs] == want
    assert small.stats.preemptions >= 1
    assert small.blocks.num_free == 3  # every block came back
    assert 2 <= max(small.stats.batch_sizes) <= 3


def test_varied_lengths_and_per_row_settings_in_one_batch(tiny):
    prompts = _prompts([1, 17, 64, 65, 130])
    params = [SamplingParams(max_new_tokens=n, ignore_eos=True) for n in (1, 9, 40, 2, 70)]
    engine = _engine(tiny, prefill_token_budget=80)
    outs = engine.generate(prompts, params)
    assert [o.generated_tokens for o in outs] == [1, 9, 40, 2, 70]
    assert all(o.finish_reason == "length" and not o.truncated for o in outs)
    alone = [engine.generate([p], s)[0].token_ids for p, s in zip(prompts, params)]
    assert [o.token_ids for o in outs] == alone


def test_stop_strings_cut_the_text(tiny):
    engine = _engine(tiny)
    prompt = _prompts([12])[0]
    full = engine.generate([prompt], GREEDY)[0]
    stop = full.text[len(full.text) // 2:][:4]
    out = engine.generate([prompt], SamplingParams(max_new_tokens=40, ignore_eos=True, stop=(stop,)))[0]
    assert out.finish_reason == "stop"
    assert out.text == full.text[: full.text.find(stop)]
    assert out.token_ids == full.token_ids[: out.generated_tokens] and out.generated_tokens < 40


def test_rows_ending_mid_flight_match_running_alone(tiny):
    """EOS and stop strings are only seen a step late (the next step is already queued): no effect on outputs."""
    engine = _engine(tiny, max_batch=3)
    prompts = _prompts([12, 30, 7, 50, 21, 3])
    full = [engine.generate([p], GREEDY)[0] for p in prompts]
    engine.eos = {full[1].token_ids[5]}  # prompt 1 (and any row drawing this token) ends by EOS
    stop = full[0].text[len(full[0].text) // 2:][:4]
    params = [SamplingParams(max_new_tokens=40, stop=(stop,))] + [SamplingParams(max_new_tokens=40)] * 5
    alone = [engine.generate([p], s)[0] for p, s in zip(prompts, params)]
    batch = engine.generate(prompts, params)
    assert [(o.token_ids, o.text, o.finish_reason) for o in batch] == [
        (o.token_ids, o.text, o.finish_reason) for o in alone]
    assert {"eos", "stop", "length"} <= {o.finish_reason for o in batch}
    assert alone[1].generated_tokens == 6 and alone[0].finish_reason == "stop"
    assert engine.stats.overlapped_steps > 0 and max(engine.stats.batch_sizes) == 3
    assert engine.blocks.num_free == engine.blocks.num_blocks - 1  # all blocks back but the graphs' scratch block


def test_seeds_reproduce_across_batches_and_differ_between_seeds(tiny):
    engine = _engine(tiny)
    prompts = _prompts([9, 40, 23])
    params = SamplingParams(max_new_tokens=24, temperature=1.0, top_k=50, top_p=0.9, seed=7, ignore_eos=True)
    batch = engine.generate(prompts, params)
    alone = engine.generate([prompts[1]], params)[0]
    assert batch[1].token_ids == alone.token_ids
    assert engine.generate(prompts, params)[2].token_ids == batch[2].token_ids
    other = engine.generate([prompts[1]], SamplingParams(max_new_tokens=24, temperature=1.0, seed=8, ignore_eos=True))
    assert other[0].token_ids != alone.token_ids
    greedy = engine.generate([prompts[1]], GREEDY)[0].token_ids[:24]
    assert alone.token_ids != greedy  # it really sampled
    model, ids = tiny[0], list(prompts[1])  # the k-th new token draws the noise of step k
    for k in range(24):
        logits = model(torch.tensor([ids]))[:, -1]
        ids.append(int(sample(logits, torch.tensor([1.0]), torch.tensor([50]), torch.tensor([0.9]), torch.tensor([7]),
                              torch.tensor([k]))))
    assert ids[len(prompts[1]):] == alone.token_ids


def test_context_limit_and_truncated_prompts(tiny):
    engine = _engine(tiny)  # context 256
    near, over = _prompts([250, 400])
    # max_new_tokens fills the whole context: prompts keep up to 255 tokens and generation stops at the limit
    outs = engine.generate([near, over], SamplingParams(max_new_tokens=256, ignore_eos=True))
    assert (outs[0].finish_reason, outs[0].generated_tokens, outs[0].truncated) == ("context", 6, False)
    assert (outs[1].finish_reason, outs[1].prompt_tokens, outs[1].generated_tokens, outs[1].truncated) == (
        "context", 255, 1, True)


def test_a_long_prompt_is_cut_to_leave_room_for_max_new_tokens(tiny):
    engine = _engine(tiny)  # context 256
    long_prompt, fits = _prompts([1000, 192])
    outs = engine.generate([long_prompt, fits], SamplingParams(max_new_tokens=64, ignore_eos=True))
    assert (outs[0].finish_reason, outs[0].prompt_tokens, outs[0].generated_tokens, outs[0].truncated) == (
        "length", 192, 64, True)
    assert outs[0].token_ids == engine.generate([long_prompt[-192:]], SamplingParams(max_new_tokens=64,
                                                                                    ignore_eos=True))[0].token_ids
    assert (outs[1].finish_reason, outs[1].prompt_tokens, outs[1].generated_tokens, outs[1].truncated) == (
        "length", 192, 64, False)


def test_empty_prompt_is_refused(tiny):
    with pytest.raises(ValueError, match="no tokens"):
        _engine(tiny).generate([[]])


def test_sampler_top_k_one_is_greedy_and_noise_is_a_pure_function():
    logits = torch.randn(4, 1000)
    ones = torch.ones(4)
    seeds, steps = torch.tensor([1, 2, 3, 4]), torch.tensor([0, 5, 5, 9])
    tokens = sample(logits, ones, torch.ones(4, dtype=torch.long), ones, seeds, steps)
    assert tokens.tolist() == logits.argmax(-1).tolist()
    assert torch.equal(gumbel_noise(seeds, steps, 1000), gumbel_noise(seeds, steps, 1000))
    assert not torch.equal(gumbel_noise(seeds, steps, 1000)[0], gumbel_noise(seeds, steps + 1, 1000)[0])
