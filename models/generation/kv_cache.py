"""The paged latent KV cache tensor: per layer `[num_blocks, BLOCK, 1, d_c + d_rope]`, sized once at start-up."""
from __future__ import annotations

import torch

from mlabatch.models.generation.block_manager import BLOCK
from mlabatch.models.generation.config import EngineConfig
from mlabatch.models.mla_decoder import MLADecoder

CPU_BLOCKS = 256  # default pool on CPU: 16k tokens


def pool_blocks(model: MLADecoder, config: EngineConfig) -> int:
    """Pages for the pool: the configured count, or a fraction of free GPU memory, or CPU_BLOCKS."""
    if config.num_blocks is not None:
        return config.num_blocks
    p = model.embed_tokens.weight
    if p.device.type != "cuda":
        return CPU_BLOCKS
    free, _ = torch.cuda.mem_get_info(p.device)
    per_block = len(model.layers) * BLOCK * model.mla.cache_width * p.element_size()
    return max(int(free * config.memory_fraction) // per_block, 2)


def allocate_kv_cache(model: MLADecoder, num_blocks: int) -> torch.Tensor:
    """The cache tensor [layers, num_blocks, BLOCK, 1, width] on the model's device and dtype; `kv[i]` is
    layer i's k_cache for the decode kernel."""
    p = model.embed_tokens.weight
    return torch.zeros(len(model.layers), num_blocks, BLOCK, 1, model.mla.cache_width, dtype=p.dtype, device=p.device)
