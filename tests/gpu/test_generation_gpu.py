"""The generation engine on a GPU: CUDA-graph decode gives the same tokens as eager decode (bf16, MLA kernel)."""
import pytest
import torch

from mlabatch.models.generation.config import EngineConfig, SamplingParams
from mlabatch.models.generation.engine import load_generator

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_cuda_graph_decode_equals_eager(tiny_decoder_dir):
    prompts = [list(range(100 + i, 100 + i + n)) for i, n in enumerate([3, 17, 64, 65, 100, 9, 40])]
    params = [SamplingParams(max_new_tokens=n, ignore_eos=True) for n in (30, 5, 60, 12, 40, 70, 1)]
    params[3] = SamplingParams(max_new_tokens=50, temperature=0.8, top_p=0.9, seed=4, ignore_eos=True)
    runs = {}
    for graphs in (False, True):
        engine = load_generator(tiny_decoder_dir, "cuda", EngineConfig(max_batch=8, num_blocks=32, cuda_graphs=graphs))
        runs[graphs] = [o.token_ids for o in engine.generate(prompts, params)]
        if graphs:
            assert engine.runner.graphs.error is None and engine.stats.graph_steps == engine.stats.decode_steps > 0
            assert engine.stats.overlapped_steps > 0
    assert runs[True] == runs[False]


def test_one_engine_run_across_batches_equals_each_batch_alone(tiny_decoder_dir):
    """The worker path on the GPU: prompts of later batches join the running decode batch, outputs come
    back per batch in input order, with the same tokens as running each batch alone."""
    import pandas as pd

    from mlabatch.models.rows import generation_frames, generation_rows

    engine = load_generator(tiny_decoder_dir, "cuda", EngineConfig(max_batch=8, num_blocks=64))
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    batches = [pd.Series([" ".join(words[: 1 + (3 * b + i) % 10]) for i in range(6)]) for b in range(5)]
    params = SamplingParams(max_new_tokens=24, ignore_eos=True)
    streamed = list(generation_frames(iter(batches), engine, params))
    mixed = max(engine.stats.batch_sizes)
    alone = [generation_rows(b, engine, params) for b in batches]
    assert mixed == 8  # rows of several batches decoded together (a batch alone has 6)
    for got, want in zip(streamed, alone):
        pd.testing.assert_frame_equal(got, want)
