"""mlabatch.udfs: Spark pandas UDFs (embedding, generation), the per-process model cache, GPU choice, SQL registration."""
from mlabatch.udfs.embed import EMBED_RESULT_TYPE, embed_udf
from mlabatch.udfs.generate import GENERATE_RESULT_TYPE, generate_udf
from mlabatch.udfs.sql import register_embed_function

__all__ = ["EMBED_RESULT_TYPE", "GENERATE_RESULT_TYPE", "embed_udf", "generate_udf", "register_embed_function"]
