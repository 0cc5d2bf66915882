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
