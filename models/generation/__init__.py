"""The generation engine, laid out like nano-vllm's engine/: config, sequence, block manager, KV cache,
scheduler, model runner, CUDA graphs, sampling, and the engine loop (`Generator`, `load_generator`)."""
