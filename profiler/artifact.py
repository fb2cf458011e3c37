"""What is this file? The manifest says, else the extension and the file's magic. Unreadable or
corrupt files are refused here, in one line, before any runtime touches them."""

from __future__ import annotations

import zipfile
from pathlib import Path

from autotimm_deploy.exporter.core.errors import UserError
from autotimm_deploy.exporter.core.manifest import Manifest, load_manifest, manifest_path, verify_files

EXTENSIONS = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript",
              ".jit": "torchscript", ".pt2": "pt2", ".engine": "trt", ".plan": "trt", ".xml": "openvino",
              ".pte": "executorch", ".tflite": "litert"}


DOUBLE_EXTENSIONS = {".aoti.pt2": "aoti", ".trt.ep": "torch-trt", ".ncnn.param": "ncnn", ".mlpackage.zip": "coreml"}


def detect(path: Path) -> tuple[str, Manifest | None]:
    """(format, manifest or None) for an artifact path."""
    if not path.exists():
        raise UserError(f"no such file: {path}")
    if not path.is_file():
        raise UserError(f"{path} is not a file")
    manifest = load_manifest(path) if manifest_path(path).exists() else None
    fmt = manifest.format if manifest else next(
        (f for double, f in DOUBLE_EXTENSIONS.items() if path.name.lower().endswith(double)),
        EXTENSIONS.get(path.suffix.lower()))
    if fmt is None:
        raise UserError(
            f"cannot tell what {path.name} is: unknown extension {path.suffix or '(none)'} and no manifest "
            f"beside it; pass --runtime (known extensions: {', '.join(sorted(EXTENSIONS))})"
        )
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty")
    if fmt == "pt2" and manifest is None and _is_aoti_package(path):
        fmt = "aoti"
    CHECKS.get(fmt, lambda p: None)(path)
    if manifest:
        verify_files(manifest, path.parent)  # sizes and sha256 (cached by size and mtime)
    return fmt, manifest


def _check_zip(kind: str, marker: str):
    def check(path: Path) -> None:
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError) as e:
            raise UserError(f"{path} is not a valid {kind} file (corrupt or truncated: {e})") from None
        if bad is not None:
            raise UserError(f"{path} is corrupt: member {bad} fails its checksum")
        if not any(marker in n for n in names):
            raise UserError(f"{path} is a zip file but not a {kind} archive")

    return check


def _is_aoti_package(path: Path) -> bool:
    """An AOTInductor package is a .pt2 archive too, with compiled kernels under data/aotinductor/."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/data/aotinductor/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _check_onnx(path: Path) -> None:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - DecodeError and friends
        raise UserError(f"{path} is not a valid ONNX file (corrupt or truncated): {type(e).__name__}") from None
    if not model.graph.node or not model.graph.input:
        raise UserError(f"{path} is not a valid ONNX file (no graph inside; corrupt or truncated?)")


def _check_openvino(path: Path) -> None:
    head = path.read_bytes()[:512].lstrip()
    if not head.startswith(b"<?xml") and not head.startswith(b"<net"):
        raise UserError(f"{path} is not an OpenVINO IR .xml file")
    if not path.with_suffix(".bin").exists():
        raise UserError(f"{path.with_suffix('.bin')} is missing: an OpenVINO IR needs its .bin beside the .xml")


def _check_flatbuffer(kind: str, identifiers: tuple[bytes, ...]):
    """Flatbuffer files carry a 4-byte file identifier after their root offset."""

    def check(path: Path) -> None:
        with path.open("rb") as f:
            head = f.read(8)
        if head[4:8] not in identifiers:
            raise UserError(f"{path} is not {kind}: no {identifiers[0].decode()} identifier (corrupt or truncated?)")

    return check


def _check_ncnn(path: Path) -> None:
    with path.open("rb") as f:
        head = f.readline(64).strip()
    if head != b"7767517":  # the magic number every ncnn .param starts with
        raise UserError(f"{path} is not an ncnn .param file (no 7767517 magic on its first line)")
    binary = path.with_name(path.name[:-len(".param")] + ".bin") if path.name.endswith(".param") else None
    if binary is None or not binary.is_file():
        raise UserError(f"{binary or path}: missing; an ncnn model needs its .bin beside the .param")


CHECKS = {
    "ncnn": _check_ncnn,
    "coreml": _check_zip("zipped Core ML package (.mlpackage.zip)", ".mlpackage/Manifest.json"),
    "executorch": _check_flatbuffer("an ExecuTorch program (.pte)", (b"ET12",)),
    "litert": _check_flatbuffer("a LiteRT / TensorFlow Lite model (.tflite)", (b"TFL3",)),
    "openvino": _check_openvino,
    "onnx": _check_onnx,
    "torchscript": _check_zip("TorchScript", "constants.pkl"),
    "pt2": _check_zip("torch.export (.pt2)", "archive_format"),
    "aoti": _check_zip("AOTInductor package (.pt2)", "/data/aotinductor/"),
    "torch-trt": _check_zip("Torch-TensorRT program (.trt.ep)", "archive_format"),
}
