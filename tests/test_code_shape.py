"""The shape of the code (issue #28): no function in exporter/, profiler/ or recipes/ is over 80
lines, nested functions and methods included, so each one can be read as one piece."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("exporter", "profiler", "recipes")
MOST_LINES = 80


def long_functions(root: Path = ROOT, most: int = MOST_LINES) -> list[str]:
    """``file:line name (N lines)`` for every function or method under the packages longer than
    ``most`` lines (its decorators not counted), in file order."""
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > most:
                        found.append((path.relative_to(root).as_posix(), node.lineno, node.name, lines))
    return [f"{file}:{line} {name} ({lines} lines)" for file, line, name, lines in sorted(found)]


def test_no_function_over_80_lines():
    too_long = long_functions()
    assert not too_long, (f"{len(too_long)} function(s) over {MOST_LINES} lines; split them by what each "
                          "part does:\n" + "\n".join(too_long))


def test_the_check_sees_nested_functions_and_methods(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MOST_LINES))
    (tmp_path / "exporter").mkdir()
    (tmp_path / "exporter" / "a.py").write_text(
        f"def short():\n    def inner():\n{body.replace('    ', '        ')}\n    return inner\n\n\n"
        f"class C:\n    async def method(self):\n{body.replace('    ', '        ')}\n\n\n"
        f"def exactly():\n{body[: body.rindex(chr(10))]}\n")
    for package in ("profiler", "recipes"):
        (tmp_path / package).mkdir()
    assert long_functions(tmp_path) == ["exporter/a.py:1 short (83 lines)", "exporter/a.py:2 inner (81 lines)",
                                        "exporter/a.py:87 method (81 lines)"]
