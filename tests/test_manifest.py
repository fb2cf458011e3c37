import json
import re

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


def test_a_manifest_without_a_field_names_it(tmp_path):
    art = tmp_path / "m.onnx"
    path = write_manifest(_manifest(), art)
    data = json.loads(path.read_text())
    del data["spec"], data["format"]
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="is malformed: it has no format, spec; re-export"):
        load_manifest(art)


@pytest.mark.parametrize("key,value,says", [
    ("num_classes", "3", "--num-classes takes an integer, got '3'"),
    ("in_chans", 3.0, "--in-chans takes an integer, got 3.0"),
    ("img_size", "64", "--img-size takes two integer sides (height, width), got '64'"),
    ("img_size", [64, 64, 3], "--img-size takes two integer sides (height, width), got (64, 64, 3)"),
])
def test_a_spec_value_of_the_wrong_type_is_named(tmp_path, key, value, says):
    """An edited spec value of the wrong type: the field and what it takes, not Python's comparison error."""
    art = tmp_path / "m.onnx"
    path = write_manifest(_manifest(), art)
    data = json.loads(path.read_text())
    data["spec"][key] = value
    path.write_text(json.dumps(data))
    with pytest.raises(UserError) as e:
        load_manifest(art)
    assert str(e.value) == f"manifest {path} is malformed: {says}; re-export the artifact"


def test_a_manifest_beside_another_file_is_not_that_files_manifest(tmp_path):
    """Copied (or left by a rename) beside another file, its hashes would vouch for the artifact it
    names while the other file is run or served."""
    art, other = tmp_path / "m.onnx", tmp_path / "v2.onnx"
    art.write_bytes(b"x")
    other.write_bytes(b"y")
    write_manifest(_manifest(), art)
    manifest_path(other).write_text(manifest_path(art).read_text())
    with pytest.raises(UserError, match=r"v2.onnx.json describes m.onnx, not v2.onnx: .* re-export v2.onnx"):
        load_manifest(other)
    assert load_manifest(manifest_path(other)).artifact == "m.onnx"  # named itself: it says what it describes
    (tmp_path / "latest.onnx").symlink_to(art)  # a pair of links to the artifact and its manifest
    (tmp_path / "latest.onnx.json").symlink_to(manifest_path(art))
    assert load_manifest(tmp_path / "latest.onnx").artifact == "m.onnx"
    manifest_path(art).write_text("[1, 2]")
    with pytest.raises(UserError, match="holds a JSON list, not a manifest"):
        load_manifest(art)


PREP = {"input_size": [3, 64, 64], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear",
        "crop_pct": 0.95, "resize": "crop", "library": "pil", "source": "timm"}


@pytest.mark.parametrize("key,value,says", [
    ("std", [0, 0, 0], "preprocessing.std values must be at least 0.001"),  # NaN answers before
    ("std", [1e-300, 1, 1], "preprocessing.std values must be at least 0.001"),  # 0 in float32: NaN answers, exit 0
    ("mean", "abc", "preprocessing.mean takes 3 finite number(s)"),  # an internal error before
    ("mean", [0.5], "preprocessing.mean takes 3 finite number(s)"),
    ("interpolation", "fancy", "preprocessing.interpolation takes one of"),
    ("crop_pct", -1, "preprocessing.crop_pct is -1, not a number in (0, 2.0]"),
    ("crop_pct", 70, "preprocessing.crop_pct is 70, not a number in (0, 2.0]"),  # an internal error before
    ("input_size", "big", "preprocessing.input_size is 'big', not [channels, height, width]"),
    ("input_size", [3, 0, 64], "preprocessing.input_size[1] is 0"),
    ("resize", "zoom", "preprocessing.resize takes one of crop, stretch, letterbox"),
    ("library", "skimage", "preprocessing.library takes one of pil, cv2"),
    ("pad_value", [300, 0, 0], "preprocessing.pad_value is [300, 0, 0], not numbers from 0 to 255"),
])
def test_a_hand_edited_preprocessing_record_is_refused(tmp_path, key, value, says):
    art = tmp_path / "m.onnx"
    m = _manifest()
    m.preprocessing = dict(PREP)
    write_manifest(m, art)
    assert load_manifest(art).preprocessing == PREP
    m.preprocessing.update(crop_pct=1.15, pad_value=[114] * 3, input_size=[1, 64, 64], mean=[0.5], std=[0.5])
    write_manifest(m, art)  # timm's own crop over 1 (volo_d5_448), 3 pad values on 1 channel (older records)
    assert load_manifest(art).preprocessing["crop_pct"] == 1.15
    m.preprocessing = {**PREP, key: value}
    write_manifest(m, art)
    with pytest.raises(UserError, match=re.escape(says)) as e:
        load_manifest(art)
    assert "\n" not in str(e.value) and str(e.value).endswith("re-export the artifact")


def test_sha256(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_a_manifest_that_is_not_a_regular_file_or_is_huge_is_refused(tmp_path, monkeypatch):
    """A FIFO named like the manifest blocked autotimm-predict and autotimm-profile forever."""
    import os

    import autotimm_deploy.exporter.core.manifest as manifest_mod

    art = tmp_path / "m.onnx"
    art.write_bytes(b"x")
    os.mkfifo(tmp_path / "m.onnx.json")
    with pytest.raises(UserError, match="m.onnx.json is not a regular file"):
        load_manifest(art)
    (tmp_path / "m.onnx.json").unlink()
    (tmp_path / "m.onnx.json").write_text(" " * 2048 + "{}")
    monkeypatch.setattr(manifest_mod, "MAX_MANIFEST_BYTES", 1024)
    with pytest.raises(UserError, match="more than a manifest holds"):
        load_manifest(art)


def test_a_manifest_given_for_its_artifact_means_the_artifact(tmp_path):
    """autotimm-predict said "unknown extension .json" and autotimm-triton "no manifest (m.onnx.json.json)";
    autotimm-profile already took it."""
    from autotimm_deploy.exporter.core.manifest import artifact_given

    (tmp_path / "m.onnx").write_bytes(b"x")
    (tmp_path / "m.onnx.json").write_text("{}")
    (tmp_path / "lone.onnx.json").write_text("{}")
    assert artifact_given(tmp_path / "m.onnx.json") == tmp_path / "m.onnx"
    assert artifact_given(str(tmp_path / "m.onnx")) == tmp_path / "m.onnx"
    assert artifact_given(tmp_path / "lone.onnx.json") == tmp_path / "lone.onnx.json"  # no artifact: as given
