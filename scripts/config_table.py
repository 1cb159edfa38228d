"""The table of config keys in docs/CONFIG.md, generated from ``clim/config/schema.py``.

Every field of the config dataclasses becomes a row: its key (``section.field``), its default as
YAML spells it, and its meaning, which is the field's comment in ``clim/config/schema.py`` (the ``#`` lines
right above the field, then its trailing comment). A field without a comment is an error that names
it, so no key reaches docs/CONFIG.md undocumented; a new field needs nothing here.

    python scripts/config_table.py            # print the table
    python scripts/config_table.py --write    # put it into docs/CONFIG.md between the two markers
    python scripts/config_table.py --check    # exit 1 when docs/CONFIG.md's table is stale (tests/test_config_table.py)
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import io
import sys
import tokenize
import typing
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "docs" / "CONFIG.md"
BEGIN = "<!-- config keys: generated from clim/config/schema.py by scripts/config_table.py --write; do not edit -->"
END = "<!-- end of config keys -->"


def _comments(source: str) -> tuple[dict[int, str], set[int]]:
    """``({line: comment text}, {lines holding only a comment})`` of a Python source."""
    text, alone = {}, set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            line = token.start[0]
            text[line] = token.string.lstrip("#").strip()
            if not token.line[:token.start[1]].strip():
                alone.add(line)
    return text, alone


def field_meanings(source: str, class_name: str) -> dict[str, str]:
    """``{field: meaning}`` for the annotated fields of ``class_name`` in ``source``."""
    comments, alone = _comments(source)
    (node,) = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef) and n.name == class_name]
    meanings = {}
    for item in node.body:
        if not isinstance(item, ast.AnnAssign) or not isinstance(item.target, ast.Name):
            continue
        above, line = [], item.lineno - 1
        while line in alone:
            above.insert(0, comments[line])
            line -= 1
        trailing = [comments[n] for n in range(item.lineno, item.end_lineno + 1) if n in comments and n not in alone]
        meanings[item.target.id] = " ".join(above + trailing)
    return meanings


def yaml_value(value) -> str:
    """A default as it is written in YAML or ``--set``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    return str(value)


def rows(source: str, root: type) -> list[tuple[str, str, str]]:
    """``(key, default, meaning)`` for every field of every section dataclass of ``root`` (``Config``)."""
    instance, hints, table, missing = root(), typing.get_type_hints(root), [], []
    for section in dataclasses.fields(root):
        section_type = hints[section.name]
        meanings = field_meanings(source, section_type.__name__)
        for item in dataclasses.fields(section_type):
            key = f"{section.name}.{item.name}"
            meaning = meanings.get(item.name, "")
            if not meaning:
                missing.append(key)
            table.append((key, yaml_value(getattr(getattr(instance, section.name), item.name)), meaning))
    if missing:
        raise SystemExit(f"config_table: no comment in clim/config/schema.py for {', '.join(missing)}; "
                         "write its meaning above the field or after it")
    return table


def markdown(table: list[tuple[str, str, str]]) -> str:
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, meaning in table:
        escaped = meaning.replace("|", "\\|")  # a literal | would split the cell
        lines.append(f"| `{key}` | `{default}` | {escaped} |")
    return "\n".join(lines)


def generated_table() -> str:
    sys.path.insert(0, str(REPO))
    from clim.config import Config

    return markdown(rows((REPO / "clim" / "config" / "schema.py").read_text(), Config))


def document_table(text: str) -> str:
    """The text between the markers of ``text`` (docs/CONFIG.md); SystemExit naming them when they are missing."""
    if BEGIN not in text or END not in text:
        raise SystemExit(f"config_table: {TARGET.relative_to(REPO)} lacks the markers {BEGIN!r} and {END!r}")
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help="replace the table in docs/CONFIG.md")
    action.add_argument("--check", action="store_true", help="exit 1 when docs/CONFIG.md's table is stale")
    args = parser.parse_args(argv)
    table = generated_table()
    if not (args.write or args.check):
        print(table)
        return 0
    document = TARGET.read_text()
    current = document_table(document)
    if args.check:
        if current != table:
            print("docs/CONFIG.md's config key table is stale: run python scripts/config_table.py --write",
                  file=sys.stderr)
            return 1
        return 0
    before, rest = document.split(BEGIN, 1)
    TARGET.write_text(f"{before}{BEGIN}\n{table}\n{END}{rest.split(END, 1)[1]}")
    print(f"wrote the table of {table.count(chr(10)) - 1} keys into {TARGET}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
