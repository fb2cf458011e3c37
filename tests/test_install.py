"""Installing an artifact (`install_artifact`): the local exporter's scratch files and the files a
fleet task ships back to the driver go into place the same way (companions, the artifact, its
manifest last) and the names the replaced manifest listed, and the new one does not, are removed
under the same rule: only the old artifact's own companions, still holding what it recorded; never
a link, a file changed since, another artifact's file or a manifest."""

import errno
import json

import autotimm_deploy.exporter.core.files as files_mod
import autotimm_deploy.exporter.core.manifest as manifest_mod
import pytest
from autotimm_deploy.exporter.core.errors import Fault, UserError
from autotimm_deploy.exporter.core.files import file_entries, sha256_file
from autotimm_deploy.exporter.core.manifest import Manifest, load_manifest, verify_files, write_manifest
from autotimm_deploy.recipes import fleet

from tests.conftest import files_under


def _manifest(folder, artifact: str, names: list[str], recorded: dict | None = None) -> Manifest:
    """A manifest for ``artifact`` listing ``names`` (files in ``folder``) as they are now, or as
    ``recorded`` says (name -> sha256)."""
    files = file_entries([folder / n for n in names])
    for name, sha in (recorded or {}).items():
        files[name] = {"sha256": sha, "bytes": 1}
    return Manifest(format="onnx", artifact=artifact, spec={}, files=files)


def _old_artifact(folder, companions: dict[str, bytes], recorded: dict | None = None, links: dict | None = None):
    """m.onnx installed in ``folder`` with ``companions`` (and ``links``: name -> the file it points
    to), all listed by its manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "m.onnx").write_bytes(b"old graph")
    for name, data in companions.items():
        (folder / name).write_bytes(data)
    for name, to in (links or {}).items():
        (folder / name).symlink_to(to)
    write_manifest(_manifest(folder, "m.onnx", ["m.onnx", *companions, *(links or {})], recorded), folder / "m.onnx")


def _ship(tmp_path) -> dict[str, bytes]:
    """What a fleet task returns for a re-export of m.onnx without companions: name -> bytes."""
    made = tmp_path / "node"
    made.mkdir()
    (made / "m.onnx").write_bytes(b"new graph")
    write_manifest(_manifest(made, "m.onnx", ["m.onnx"]), made / "m.onnx")
    return {n: (made / n).read_bytes() for n in ("m.onnx", "m.onnx.json")}


def _fleet(folder, tmp_path):
    """The fleet driver's install of a re-export of m.onnx (ready to run)."""
    shipped = _ship(tmp_path)
    return lambda: fleet._install(folder, shipped, "m.onnx.json")


def _local(folder, tmp_path):
    """The local exporter's install of a re-export of m.onnx from its scratch folder (ready to run)."""
    from autotimm_deploy.exporter.core.files import install_artifact

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "m.onnx").write_bytes(b"new graph")
    manifest = _manifest(scratch, "m.onnx", ["m.onnx"])
    return lambda: install_artifact(folder, "m.onnx", {"m.onnx": scratch / "m.onnx"}, manifest)


INSTALLS = [pytest.param(_fleet, id="fleet"), pytest.param(_local, id="local")]


def _installed(folder) -> None:
    assert (folder / "m.onnx").read_bytes() == b"new graph"
    assert list(load_manifest(folder / "m.onnx").files) == ["m.onnx"]
    verify_files(load_manifest(folder / "m.onnx"), folder)


@pytest.mark.parametrize("install", INSTALLS)
def test_the_old_artifacts_own_stale_companion_is_removed(tmp_path, install):
    out = tmp_path / "out"
    _old_artifact(out, {"m.onnx.data": b"weights"})
    install(out, tmp_path)()
    _installed(out)
    assert not (out / "m.onnx.data").exists()


@pytest.mark.parametrize("install", INSTALLS)
def test_a_stale_name_that_is_a_link_is_left_alone(tmp_path, install):
    precious = tmp_path / "precious.bin"
    precious.write_bytes(b"weights")  # the manifest recorded what the link leads to
    out = tmp_path / "out"
    _old_artifact(out, {}, links={"m.onnx.data": precious})
    install(out, tmp_path)()
    _installed(out)
    assert (out / "m.onnx.data").is_symlink() and precious.read_bytes() == b"weights"


@pytest.mark.parametrize("install", INSTALLS)
def test_a_stale_name_changed_since_its_manifest_is_left_alone(tmp_path, install):
    out = tmp_path / "out"
    _old_artifact(out, {"m.onnx.data": b"weights"})
    (out / "m.onnx.data").write_bytes(b"the user's own file now")
    install(out, tmp_path)()
    _installed(out)
    assert (out / "m.onnx.data").read_bytes() == b"the user's own file now"


@pytest.mark.parametrize("install", INSTALLS)
def test_a_stale_name_that_is_another_artifact_or_a_manifest_is_left_alone(tmp_path, install):
    """The old manifest lists another artifact's file (named after m too: m.pt), its manifest, and
    files not named after m at all; each holds what was recorded, so only the names protect them."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "m.pt").write_bytes(b"torchscript")
    write_manifest(_manifest(out, "m.pt", ["m.pt"]), out / "m.pt")
    (out / "notes.txt").write_text("mine")
    (out / "m.onnx.extra.json").write_text("{}")
    others = ["m.pt", "m.pt.json", "notes.txt", "m.onnx.extra.json"]
    recorded = {n: sha256_file(out / n) for n in others}
    _old_artifact(out, {}, recorded=recorded)
    install(out, tmp_path)()
    _installed(out)
    assert all((out / n).exists() for n in others)
    assert load_manifest(out / "m.pt").format == "onnx" and (out / "m.pt").read_bytes() == b"torchscript"


@pytest.mark.parametrize("install", INSTALLS)
def test_a_full_disk_is_a_fault_and_leaves_no_artifact_without_its_manifest(tmp_path, install, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "out"
    out.mkdir()
    real = files_mod.atomic_write_bytes

    def manifest_full(path, data):  # the files go in; the manifest, written last, finds the disk full
        if str(path).endswith(".json"):
            full()
        real(path, data)

    ready = install(out, tmp_path)
    monkeypatch.setattr(files_mod, "atomic_write_bytes", manifest_full)
    monkeypatch.setattr(manifest_mod, "atomic_write_text", lambda path, text: full())
    with pytest.raises(Fault, match="no space left on the device writing .*m.onnx.*: free some space and rerun"):
        ready()
    assert files_under(out) == []


def test_a_fleet_install_takes_only_plain_names(tmp_path):
    shipped = _ship(tmp_path)
    shipped["../escaped.onnx"] = b"x"
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UserError, match="not a plain file name"):
        fleet._install(out, shipped, "m.onnx.json")
    assert not (tmp_path / "escaped.onnx").exists() and files_under(out) == []


def test_max_drop_is_one_check_for_the_api_the_recipe_and_the_command_line(tmp_path):
    import argparse

    from autotimm_deploy.exporter.core.limits import check_max_drop, max_drop_arg

    for good in (0, 0.5, 100):
        assert check_max_drop(good) == float(good) and max_drop_arg(str(good)) == float(good)
    for bad in (-0.1, 100.5, float("nan"), float("inf"), True, "1"):
        with pytest.raises(UserError, match="--max-drop takes 0 to 100 metric points"):
            check_max_drop(bad)
    for text in ("-0.1", "100.5", "nan", "inf", "one"):
        with pytest.raises(argparse.ArgumentTypeError, match="takes a number from 0 to 100"):
            max_drop_arg(text)
    with pytest.raises(UserError, match="max_drop takes 0 to 100 metric points, got 100.5"):
        check_max_drop(100.5, "max_drop")
    assert json.dumps(check_max_drop(7)) == "7.0"
