"""The embedder on a GPU (fp16 network, fp32 pooling) agrees with float32 on the CPU.

Random weights at all-MiniLM-L6-v2's shape and a tokenizer trained on offline text: the GPU machine
has no room for the real weights package, and the check is about numerics, not the trained model.
"""
import numpy as np
import pytest
import torch
from pydoc_data.topics import topics

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def random_minilm(tmp_path_factory):
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel

    path = tmp_path_factory.mktemp("random-minilm")
    from tokenizers.processors import BertProcessing

    tokenizer = BertWordPieceTokenizer(lowercase=True)
    tokenizer.train_from_iterator(list(topics.values()), vocab_size=3000)
    tokenizer.post_processor = BertProcessing(("[SEP]", tokenizer.token_to_id("[SEP]")),
                                              ("[CLS]", tokenizer.token_to_id("[CLS]")))
    tokenizer.save(str(path / "tokenizer.json"))
    config = BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=384, num_hidden_layers=6,
                        num_attention_heads=12, intermediate_size=1536)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    return path


def test_fp16_gpu_matches_fp32_cpu(random_minilm):
    from mlabatch.models.registry.load import load_model

    texts = ["short", "", "Grüße 日本語 🚀", topics["class"], topics["for"][:700]] + [topics["if"][:n] for n in (50, 400)]
    cpu = load_model(random_minilm, "cpu", token_budget=300).embed(texts)
    gpu_model = load_model(random_minilm, "cuda")
    assert gpu_model.device.type == "cuda"
    gpu = gpu_model.embed(texts)
    cosine = (cpu * gpu).sum(1) / np.linalg.norm(cpu, axis=1) / np.linalg.norm(gpu, axis=1)
    assert gpu.dtype == np.float32 and cosine.min() >= 0.999, cosine


def test_documents_worker_on_gpu_matches_embedding_its_chunk_texts(random_minilm):
    """The pipeline's model stage on the GPU (tokenized once, windows embedded from their ids, batches
    streamed) gives each window the vector of its chunk text embedded on its own."""
    import pyarrow as pa

    from mlabatch.models.registry.load import load_model
    from mlabatch.udfs.embed import Windowing, embed_documents_worker

    texts = list(topics.values())[:200] + [" ".join(topics.values())[:300_000]]
    table = pa.table({"id": [str(i) for i in range(len(texts))], "text": texts, "content_hash": ["h"] * len(texts),
                      "doc_error": pa.nulls(len(texts), pa.string())})
    reports = []
    worker = embed_documents_worker(str(random_minilm), Windowing(256, 32, 64, pool=False), device="cuda",
                                    report=reports.append)
    rows = pa.Table.from_batches(list(worker(iter(table.to_batches(max_chunksize=64))))).to_pandas()
    good = rows[rows["error"].isna()]
    direct = load_model(random_minilm, "cuda").embed_with_counts(list(good["chunk_text"]))
    ours = np.stack(good["embedding"].to_numpy())
    cosine = (ours * direct.embeddings).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(direct.embeddings, axis=1)
    assert cosine.min() >= 0.9999 and list(good["token_count"]) == direct.token_counts
    assert len(rows) > len(texts) and reports[0].items == len(texts) and 0 < reports[0].engine_share <= 1
