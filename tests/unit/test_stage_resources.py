"""Which resources the model stage asks for: one GPU and its cores per task only where the cluster shares
GPUs among ordinary tasks; nothing in local mode or where every task already holds a whole GPU."""
import pytest

from mlabatch.pipelines.resources import model_task_cpus

CLUSTER = {"spark.master": "spark://10.0.0.1:7077", "spark.executor.resource.gpu.amount": "1"}


@pytest.mark.parametrize("conf, cpus", [
    ({**CLUSTER, "spark.task.resource.gpu.amount": "0.25", "spark.executor.cores": "4"}, 4),  # g6e.xlarge
    ({**CLUSTER, "spark.executor.resource.gpu.amount": "8", "spark.task.resource.gpu.amount": "0.04",
      "spark.executor.cores": "192"}, 24),  # p5.48xlarge: 8 GPUs, 192 vCPUs
    ({**CLUSTER, "spark.task.resource.gpu.amount": "0.0625"}, 16),  # executor cores unset: from the share
    ({**CLUSTER, "spark.task.resource.gpu.amount": "1"}, None),  # every task holds a GPU already
    ({**CLUSTER}, None),  # no task GPU amount: Spark does not schedule GPUs
    ({"spark.master": "local[4]", "spark.executor.resource.gpu.amount": "1",
      "spark.task.resource.gpu.amount": "0.25"}, None),  # local mode cannot use stage-level profiles
])
def test_model_task_cpus(conf, cpus):
    assert model_task_cpus(conf) == cpus

