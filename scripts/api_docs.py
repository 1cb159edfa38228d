"""Write docs/API.md, the reference of ``import clim``, from the docstrings (issue 18).

Every name of ``clim.__all__``: its signature and docstring; for classes, their public methods and
properties too; constants as a table. ``tests/test_docs.py`` fails when the file is stale. Usage:

    python scripts/api_docs.py           # rewrite docs/API.md
    python scripts/api_docs.py --check   # exit 1 if docs/API.md is not what this writes
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import clim

API_MD = Path(__file__).resolve().parents[1] / "docs" / "API.md"
HEADER = """# Python API

`import clim` exposes these names (loaded on first use, so the command line stays fast). Generated
from the docstrings by `python scripts/api_docs.py`; `make test` checks that it is up to date.
README ["Use CLIM in your own loop"](../README.md#use-clim-in-your-own-loop) shows them in a
training loop, and [examples/](../examples/) with lightly and in a SimCLR-style loop.
"""


def _signature(obj) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"


def _doc(obj) -> str:
    """The docstring as written (a fenced block: its layout survives Markdown)."""
    return "```text\n" + inspect.cleandoc(obj.__doc__ or "(no docstring)") + "\n```"


def _members(cls) -> list[str]:
    lines = []
    for name, member in vars(cls).items():
        if name.startswith("_") or any(hasattr(base, name) for base in cls.__mro__[1:]):
            continue  # private, or an override of a base class's method (nn.Module.extra_repr)
        if isinstance(member, property):
            lines += [f"#### `{cls.__name__}.{name}` (property)", "", _doc(member.fget), ""]
        elif inspect.isfunction(member):
            lines += [f"#### `{cls.__name__}.{name}{_signature(member)}`", "", _doc(member), ""]
    return lines


def render() -> str:
    names = sorted(clim.__all__, key=str.lower)
    objects = {name: getattr(clim, name) for name in names}
    constants = [name for name in names if not callable(objects[name])]
    lines = [HEADER, "## Constants (METHOD's defaults)", "", "| name | value |", "| --- | --- |"]
    lines += [f"| `clim.{name}` | `{objects[name]!r}` |" for name in constants]
    lines.append("")
    for name in (name for name in names if name not in constants):
        obj = objects[name]
        kind = "class" if inspect.isclass(obj) else "function"
        lines += [f"## `clim.{name}{_signature(obj)}`", "", f"*{kind}, defined in `{obj.__module__}`*", "",
                  _doc(obj), ""]
        if inspect.isclass(obj):
            lines += _members(obj)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write docs/API.md from the docstrings of clim's Python API.")
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/API.md is stale, write nothing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        fresh = API_MD.exists() and API_MD.read_text() == text
        print(f"{API_MD} is {'up to date' if fresh else 'stale: run python scripts/api_docs.py'}")
        return 0 if fresh else 1
    API_MD.write_text(text)
    print(f"wrote {API_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
