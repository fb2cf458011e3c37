"""A node that dies in the middle of a fleet run (`recipes.fleet` on ``ray.cluster_utils.Cluster``):
its exports are retried on another node; its device's timings are reported failed while the other
devices' finish; a rerun with the node back does only what failed."""

import threading
import time

import pytest
from autotimm_deploy.recipes.jobs import JobStatus

from tests.test_fleet import recipe, short

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
from autotimm_deploy.recipes import fleet  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402


def _when(predicate, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.1)


def test_a_node_that_dies_mid_run(tmp_path):
    """Exports on a node that dies are retried on another; timings of a device whose node left
    are reported failed, the others finish, and a rerun with the node back does only those."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        doomed = c.add_node(num_cpus=1, resources={"device:cpu@x": 1})
        c.wait_for_nodes()
        ray.init(address=c.address, include_dashboard=False, log_to_driver=False, logging_level="error")
        r = recipe(tmp_path, "[cpu@x, cpu@y]")
        result = {}
        worker = threading.Thread(target=lambda: result.update(rows=fleet.run_exports(r, c.address)))
        worker.start()
        _when(lambda: "CPU" not in ray.available_resources())  # an export runs on the doomed node (its only CPU)
        survivor = c.add_node(num_cpus=1, resources={"device:cpu@y": 1})
        c.remove_node(doomed)
        worker.join(timeout=300)
        rows = result["rows"]
        assert [row["status"] for row in rows] == [JobStatus.EXPORTED] * 2, rows
        assert {row["node"].split(":")[-1] for row in rows} == {short(survivor)}

        back = c.add_node(num_cpus=1, resources={"device:cpu@x": 1})
        c.wait_for_nodes()
        worker = threading.Thread(target=lambda: result.update(rows=fleet.run_profiles(r, c.address)))
        worker.start()
        # a timing holds cpu@x (Ray lists no resource with nothing left available)
        _when(lambda: "device:cpu@x" in ray.cluster_resources() and "device:cpu@x" not in ray.available_resources())
        c.remove_node(back)
        worker.join(timeout=300)
        rows = result["rows"]
        by_device = {d: [row for row in rows if row["device"] == d] for d in ("cpu@x", "cpu@y")}
        assert all(row["status"] == JobStatus.PROFILED for row in by_device["cpu@y"]), by_device["cpu@y"]
        failed = [row for row in by_device["cpu@x"] if row["status"] == JobStatus.FAILED]
        assert failed and all("left the cluster" in row["error"] or "Died" in row["error"] for row in failed)
        assert all(row["status"] in (JobStatus.FAILED, JobStatus.PROFILED) for row in by_device["cpu@x"])

        c.add_node(num_cpus=1, resources={"device:cpu@x": 1})
        c.wait_for_nodes()
        rerun = fleet.run_profiles(r, c.address)
        status = {(row["device"], row["key"]): row["status"] for row in rerun}
        assert all(status[("cpu@y", row["key"])] == JobStatus.UP_TO_DATE for row in by_device["cpu@y"])
        assert all(status[("cpu@x", row["key"])] == JobStatus.PROFILED for row in failed)
    finally:
        ray.shutdown()
        c.shutdown()
