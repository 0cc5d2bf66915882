"""The embedding engine: `Embedder` and `load_embedder` (engine), token-budget batching, pooling, chunking."""
