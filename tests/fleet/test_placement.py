"""Placement on a local Ray of 2 CPUs and 2 advertised GPUs (no GPU is used: Ray places by what is advertised): the
fleet's task options give one run per GPU, and half a GPU packs two runs on one."""

import time

import pytest

ray = pytest.importorskip("ray")

from dreambooth.config import FleetConfig  # noqa: E402
from dreambooth.fleet.driver import task_options  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def fake_gpus():
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()


def spans(options: dict, n: int) -> list[tuple[float, float, str]]:
    """`n` tasks holding their place for a second with the fleet's options: (start, end, the GPU they saw) each."""

    def hold():
        started = time.time()
        time.sleep(1.0)
        return started, time.time(), ",".join(str(i) for i in ray.get_gpu_ids())

    # placement only: workers may be reused here (the fleet starts a fresh one per run)
    task = ray.remote(**{**options, "max_calls": 0})(hold)
    return ray.get([task.remote() for _ in range(n)])


def overlapping(found):
    return [(a, b) for i, a in enumerate(found) for b in found[i + 1 :] if a[0] < b[1] and b[0] < a[1]]


def test_one_run_per_gpu_and_half_a_gpu_packs_two():
    whole = spans(task_options(FleetConfig(gpus_per_run=1, cpus_per_run=0.5), cluster_gpus=2), 4)
    assert all(gpu in ("0", "1") for *_, gpu in whole)
    assert overlapping(whole) and all(a[2] != b[2] for a, b in overlapping(whole))  # at once only on different GPUs
    half = spans(task_options(FleetConfig(gpus_per_run=0.5, cpus_per_run=0.5), cluster_gpus=2), 4)
    assert any(a[2] == b[2] for a, b in overlapping(half))  # two runs at once on one GPU


def test_a_run_on_a_gpu_gets_a_fresh_worker_that_sees_its_gpu_alone():
    def where():
        import os

        return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")

    options = task_options(FleetConfig(gpus_per_run=1, cpus_per_run=1), cluster_gpus=2)
    task = ray.remote(**{**options, "runtime_env": None})(where)
    seen = ray.get([task.remote() for _ in range(3)])
    assert len({pid for pid, _ in seen}) == 3 and {gpu for _, gpu in seen} <= {"0", "1"}
