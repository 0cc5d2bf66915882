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
