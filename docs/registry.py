"""Write the registry tables of docs/formats.md and docs/architecture.md from the code: every
registered format and runtime, with what each declares. `tests/test_docs.py` fails when a page is
behind the registries. Run from the repository root:

    .venv/bin/python docs/registry.py          # rewrite the generated blocks
    .venv/bin/python docs/registry.py --check  # exit 1 when a page is out of date
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from autotimm_deploy.exporter.formats import FORMATS
from autotimm_deploy.profiler.runtimes import RUNTIMES

DOCS = Path(__file__).resolve().parent
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def formats_table() -> str:
    rows = ["| format | files | made from | runs on | " + " | ".join(PRECISIONS) + " | `--dynamic-size` | own options | extra |",
            "|---|---|---|---|" + ":-:|" * len(PRECISIONS) + ":-:|---|---|"]
    for name, cls in FORMATS.items():
        files = " + ".join(f"`{e}`" for e in (cls.suffix, *cls.companions))
        if cls.aliases:
            files += " (also " + ", ".join(f"`{a}`" for a in cls.aliases) + ")"
        marks = " | ".join("✓" if p in cls.precisions else "" for p in PRECISIONS)
        options = ", ".join(f"`{f.metadata['cli']['flag']}`" for f in cls.cli_fields()) or "-"
        rows.append(f"| `{name}` | {files} | {cls.derives_from or 'the model'} | `{cls.default_runtime}` | {marks} | "
                    f"{'✓' if cls.dynamic_size else ''} | {options} | {f'`[{cls.extra}]`' if cls.extra else '-'} |")
    return "\n".join(rows)


def runtimes_table() -> str:
    rows = ["| runtime | module | opens | devices | extra |", "|---|---|---|---|---|"]
    for name, cls in RUNTIMES.items():
        module = cls.__module__.rsplit(".", 1)[-1]
        rows.append(f"| `{name}` | `profiler/runtimes/{module}.py` | {', '.join(f'`{f}`' for f in cls.formats)} | "
                    f"{', '.join(cls.devices)} | {f'`[{cls.extra}]`' if cls.extra else '-'} |")
    return "\n".join(rows)


BLOCKS = {
    "formats.md": {"formats": formats_table},
    "architecture.md": {"formats": formats_table, "runtimes": runtimes_table},
}


def render(text: str, blocks: dict) -> str:
    """``text`` with each ``<!-- registry:NAME -->`` ... ``<!-- /registry:NAME -->`` block regenerated."""
    for key, make in blocks.items():
        pattern = re.compile(rf"(<!-- registry:{key} -->\n).*?(<!-- /registry:{key} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"no <!-- registry:{key} --> block in the page")
        text = pattern.sub(lambda m: m.group(1) + make() + "\n" + m.group(2), text)
    return text


def main(argv: list[str]) -> int:
    stale = []
    for page, blocks in BLOCKS.items():
        path = DOCS / page
        old = path.read_text()
        new = render(old, blocks)
        if new != old:
            stale.append(page)
            if "--check" not in argv:
                path.write_text(new)
    if stale and "--check" in argv:
        print(f"out of date: {', '.join(stale)} (run python docs/registry.py)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
