"""The sample table holds every awkward case; device choice outside a GPU task falls back to the CPU."""
import pytest
import torch

from mlabatch.jobs.sample_data import sample_documents
from mlabatch.udfs.devices import task_device


def test_sample_documents_cover_the_awkward_cases(tokenizer):
    table = sample_documents()
    rows = dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist()))
    assert len(rows) == table.num_rows > 50  # ids are unique
    assert rows["edge-empty"] == "" and not rows["edge-whitespace"].strip()
    assert rows["edge-null-1"] is None and rows["edge-null-2"] is None
    assert any(ord(ch) > 0x3000 for ch in rows["edge-unicode"])
    tokenizer.no_truncation()
    assert len(tokenizer.encode(rows["edge-very-long"]).ids) > 64 * 256  # over max_chunks_per_doc windows
    lengths = sorted(len(t.split()) for t in rows.values() if t)
    assert lengths[len(lengths) // 10] < 200 and lengths[-2] > 2000  # short and long documents both


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback on a machine without CUDA")
def test_without_gpu_the_device_is_cpu_and_cuda_is_refused():
    assert task_device("auto") == "cpu"
    assert task_device("cpu") == "cpu"
    with pytest.raises(RuntimeError, match="embed.device=auto"):
        task_device("cuda")
