"""mlabatch.udfs: Spark pandas UDFs (embedding), the per-process model cache, GPU choice, SQL registration."""
from mlabatch.udfs.embed import EMBED_RESULT_TYPE, embed_udf
from mlabatch.udfs.sql import register_embed_function

__all__ = ["EMBED_RESULT_TYPE", "embed_udf", "register_embed_function"]
