"""Recipes on a Ray cluster (`recipes.fleet`), simulated on this machine with
``ray.cluster_utils.Cluster``: nodes that declare different devices and CPU counts. Cells land on
the right nodes, never two timings on one device at once, results come back into the driver's
folder in the local runner's structure, a node that dies mid-run has its cells retried or
reported, and a rerun skips what finished."""

import hashlib
import json

import pytest
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.manifest import load_manifest, verify_files
from autotimm_deploy.recipes.jobs import JobStatus
from autotimm_deploy.recipes.schema import load_recipe

from tests.conftest import call_cli, run_cli

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
from autotimm_deploy.recipes import fleet, runner  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

RECIPE = """\
recipe: 1
name: {name}
models: [test_resnet]
tasks: [classification]
formats: {formats}
precisions: [fp32]
batch_sizes: [1]
devices: {devices}
img_size: 64
num_classes: 4
profile: {{max_time: 0.3, warmup_time: 0.1}}
"""


def recipe(tmp_path, devices: str, name: str = "fleet", formats: str = "[onnx, torchscript]"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{name}.yaml"
    path.write_text(RECIPE.format(name=name, devices=devices, formats=formats))
    return load_recipe(path, tmp_path / "out")


def short(node) -> str:
    return node.node_id[:8]


@pytest.fixture(scope="module")
def cluster():
    """A head that runs nothing, node a (1 CPU, devices cpu@a and cuda:0@a, a GPU it does not have)
    and node b (2 CPUs, devices cpu@b and plain cpu: two devices on one node share its cores)."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = {"a": c.add_node(num_cpus=1, resources={"device:cpu@a": 1, "device:cuda:0@a": 1}),
             "b": c.add_node(num_cpus=2, resources={"device:cpu@b": 1, "device:cpu": 1})}
    c.wait_for_nodes()
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False, logging_level="error")
    yield c, nodes
    ray.shutdown()
    c.shutdown()


def test_exports_come_back_to_the_driver_and_a_rerun_skips_them(cluster, tmp_path):
    c, nodes = cluster
    r = recipe(tmp_path, "[cpu@a, cpu@b]")
    rows = fleet.run_exports(r, c.address)
    assert [row["status"] for row in rows] == [JobStatus.EXPORTED] * 2, rows
    assert {row["node"].split(":")[-1] for row in rows} <= {short(n) for n in nodes.values()}  # never the head
    for row in rows:
        m = load_manifest(r.artifacts_dir / row["artifact"].split("/")[-1])
        verify_files(m, r.artifacts_dir)
        assert m.parity.verdict == "pass"
    stored = json.loads((r.results_dir / "export.json").read_text())["rows"]
    assert [s["status"] for s in stored] == ["exported", "exported"]
    again = fleet.run_exports(r, c.address)
    assert [row["status"] for row in again] == [JobStatus.UP_TO_DATE] * 2 and "node" not in again[0]
    # a re-export whose manifest no longer lists a companion removes it (the local exporter's rule:
    # named after the artifact, holding what the old manifest recorded; tests/test_install.py)
    artifact = r.artifacts_dir / rows[0]["artifact"].split("/")[-1]
    fresh = {artifact.name: artifact.read_bytes(), f"{artifact.name}.json": (artifact.parent / f"{artifact.name}.json").read_bytes()}
    listed = json.loads(fresh[f"{artifact.name}.json"])
    old = r.artifacts_dir / f"{artifact.name}.old.data"
    old.write_bytes(b"x")
    listed["files"][old.name] = {"bytes": 1, "sha256": hashlib.sha256(b"x").hexdigest()}
    (r.artifacts_dir / f"{artifact.name}.json").write_text(json.dumps(listed))
    fleet._install(r.artifacts_dir, fresh, f"{artifact.name}.json")
    assert not old.exists()
    verify_files(load_manifest(artifact), r.artifacts_dir)


def test_an_engine_is_built_on_the_node_of_its_gpu(cluster, tmp_path):
    """TensorRT is one export per CUDA device, sent to the node that declares it (whose missing GPU
    it then reports, as the local runner would on a machine without one)."""
    c, nodes = cluster
    r = recipe(tmp_path, "[cpu@b, cuda:0@a]", formats="[onnx, trt]")
    rows = fleet.run_exports(r, c.address)
    (engine,) = [row for row in rows if row["format"] == "trt"]
    assert engine["artifact"].endswith("test_resnet-cuda0@a.engine") and engine["device"] == "cuda:0@a"
    assert engine["node"].endswith(short(nodes["a"])) and engine["status"] == JobStatus.SKIPPED
    assert engine["reason"].startswith("on this node: ") and "GPU" in engine["reason"], engine
    unknown = recipe(tmp_path / "unknown", "[cuda:0@nowhere]", formats="[trt]")
    with pytest.raises(UserError, match="no node of the Ray cluster declares device cuda:0@nowhere"):
        fleet.run_exports(unknown, c.address)


def test_an_export_asks_for_the_memory_its_model_needs(tmp_path):
    """Ray places exports by memory too: its family's measured copies of the fp32 weights over a
    1.5 GiB process, never more than the largest node has (else nothing could take it), nothing for an
    unknown size."""
    r = recipe(tmp_path, "[cpu]")
    job = r.export_jobs()[0]
    weights = fleet.weights_bytes(job)
    import timm

    assert weights == 4 * sum(p.numel() for p in timm.create_model("test_resnet", num_classes=4).parameters())
    assert fleet.export_memory(job, 64 * 2**30, {}) == int(fleet.BASE_MEMORY + fleet.COPIES["ResNet"] * weights)
    assert fleet.export_memory(job, 2**29, {}) == 2**29
    assert fleet.export_memory(job, 0, {}) is None
    job.spec = job.spec.replace(checkpoint=str(tmp_path / "missing.ckpt"), weights="checkpoint")
    assert fleet.export_memory(job, 64 * 2**30, {}) is None


def test_timings_run_on_their_device_one_at_a_time(cluster, tmp_path):
    c, nodes = cluster
    r = recipe(tmp_path, "[cpu@a, cpu@b, cpu]")
    fleet.run_exports(r, c.address)
    rows = fleet.run_profiles(r, c.address)
    assert len(rows) == 9 and all(row["status"] == JobStatus.PROFILED for row in rows), rows
    owner = {"cpu@a": short(nodes["a"]), "cpu@b": short(nodes["b"]), "cpu": short(nodes["b"])}
    for row in rows:
        assert row["node"].split(":")[-1] == owner[row["device"]], row
    # one timing at a time per device, and (a CPU timing holding its node's cores) per node
    for node in {short(n) for n in nodes.values()}:
        spans = sorted((row["started"], row["ended"]) for row in rows if row["node"].endswith(node))
        assert all(end <= nxt_start for (_, end), (nxt_start, _) in zip(spans, spans[1:])), spans
    # the driver wrote each result where the local runner does; the benchmark page reads them
    for row in rows:
        stored = json.loads(open(row["result"]).read())
        assert stored["report"]["runs"] and stored["fingerprint"]["settings"]["device"] == row["device"]
    # the benchmark page has one column per device
    from autotimm_deploy.recipes import benchmark

    md, _, _ = benchmark.write(r)
    page = md.read_text()
    assert "## Inference speed by device" in page and "| Runtime | cpu | cpu@a | cpu@b |" in page
    again = fleet.run_profiles(r, c.address)
    assert all(row["status"] == JobStatus.UP_TO_DATE for row in again)


def test_same_structure_as_the_local_runner(cluster, tmp_path):
    """A recipe on plain `cpu`: its rows and result files through Ray and through the local runner
    differ only in where and when each ran."""
    c, _ = cluster
    local = recipe(tmp_path / "local", "[cpu]", "same")
    remote = recipe(tmp_path / "remote", "[cpu]", "same")
    runner.run_exports(local)
    fleet.run_exports(remote, c.address)
    local_rows, remote_rows = runner.run_profiles(local), fleet.run_profiles(remote, c.address)
    placement = {"node", "started", "ended"}
    assert [{k: v for k, v in row.items() if k not in placement | {"result"}} for row in remote_rows] == \
        [{k: v for k, v in row.items() if k != "result"} for row in local_rows]
    for lr, rr in zip(local_rows, remote_rows):
        a, b = json.loads(open(lr["result"]).read()), json.loads(open(rr["result"]).read())
        # the same fingerprint, but for the artifacts' hashes (a TorchScript zip differs run to run)
        names = [{**f, "files": sorted(f.get("files", {}))} for f in (a["fingerprint"], b["fingerprint"])]
        assert a.keys() == b.keys() and names[0] == names[1]
        assert a["report"].keys() == b["report"].keys()


def test_fleet_device_errors_are_one_line(tmp_path, export_cli):
    r = tmp_path / "r.yaml"
    r.write_text(RECIPE.format(name="r", devices="[cpu@nowhere]", formats="[onnx, torchscript]"))
    p = export_cli("--recipe", str(r), "-o", str(tmp_path / "out"))  # the local runner: exports, no device needed
    assert p.returncode == 0, p.stderr
    p = call_cli("autotimm_deploy.profiler.cli", "--recipe", str(r), "-o", str(tmp_path / "out"))
    assert p.returncode == 0 and "fleet device" in p.stdout  # skipped locally, with why
    p = run_cli("autotimm_deploy.profiler.cli", "--recipe", str(r), "-o", str(tmp_path / "out"), "--ray", "local")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "no node of the Ray cluster declares device cpu@nowhere" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = export_cli("test_resnet", "--ray")
    assert p.returncode == 2 and "use it with --recipe" in p.stderr
