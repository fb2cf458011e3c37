import json

import pytest
from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.files import sha256_file
from autotimm_deploy.exporter.core.manifest import Manifest, TensorSig, load_manifest, manifest_path, write_manifest


def _manifest():
    return Manifest(format="onnx", artifact="m.onnx", spec={"model": "resnet18"},
                    inputs=[TensorSig("input", "float32", ["batch", 3, 64, 64])],
                    files={"m.onnx": {"sha256": "0" * 64, "bytes": 1}})


def test_roundtrip(tmp_path):
    art = tmp_path / "m.onnx"
    art.write_bytes(b"x")
    path = write_manifest(_manifest(), art)
    assert path == manifest_path(art) == tmp_path / "m.onnx.json"
    m = load_manifest(art)
    assert m.inputs[0].shape == ["batch", 3, 64, 64] and m.schema_version == 1
    assert load_manifest(path).format == "onnx"
    assert [p.name for p in tmp_path.iterdir()] and not list(tmp_path.glob(".*tmp"))


def test_schema_version_and_corruption(tmp_path):
    art = tmp_path / "m.onnx"
    path = write_manifest(_manifest(), art)
    data = json.loads(path.read_text())
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="schema_version 99"):
        load_manifest(art)
    path.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_manifest(art)
    with pytest.raises(UserError, match="no manifest"):
        load_manifest(tmp_path / "other.onnx")


@pytest.mark.parametrize("files,artifact", [
    ({"../victim": {}, "m.onnx": {}}, "m.onnx"),
    ({"/etc/passwd": {}, "m.onnx": {}}, "m.onnx"),
    ({"sub/x": {}, "m.onnx": {}}, "m.onnx"),
    ({"..": {}, "m.onnx": {}}, "m.onnx"),
    ({"m.onnx": {}}, "../m.onnx"),
    ({"other.onnx": {}}, "m.onnx"),
])
def test_manifest_names_outside_the_folder_are_refused(tmp_path, files, artifact):
    """A manifest's file names are joined to its folder to replace and delete files: plain names only."""
    art = tmp_path / "m.onnx"
    path = write_manifest(_manifest(), art)
    data = json.loads(path.read_text())
    data["files"], data["artifact"] = files, artifact
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="malformed"):
        load_manifest(art)


def test_sha256(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
