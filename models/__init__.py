"""mlabatch.models: the networks (MLA attention, encoder, decoder, packed encoder, varlen attention, RoPE
tables, the mla_config.json schema); the engines, conversion and the registry are its subpackages."""
