"""docs/ARCHITECTURE.md describes the tree as it is: its module map names every module of clim/ and
nothing that does not exist, and every ``clim.x.y`` name it cites still resolves.

The module map is the fenced block that starts with the line ``clim/``. An entry is a line indented
by an even number of spaces, at most 12: its name column runs up to the first double space, and may
list several names (``linear.py, semisup.py``); a name ending in ``/`` is a folder, and the entries
indented under it are inside it. Lines indented further continue the description above them.
Package folders stand for their ``__init__.py``; every other ``*.py`` file must be named."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "ARCHITECTURE.md"
PACKAGE = REPO / "clim"
MAX_ENTRY_INDENT = 12


def module_map(text: str) -> list[str]:
    """The lines of the fenced block that opens with ``clim/``."""
    for block in re.findall(r"^```\n(.*?)^```$", text, flags=re.M | re.S):
        lines = block.splitlines()
        if lines and lines[0] == "clim/":
            return lines
    raise AssertionError("docs/ARCHITECTURE.md has no module map (a ``` block whose first line is 'clim/')")


def named_paths(lines: list[str]) -> list[str]:
    """Repository-relative paths the map names under ``clim/`` (folders end with ``/``)."""
    stack = ["clim"]  # the open folders: an entry at indent 2 * d lies in stack[d - 1]
    paths = []
    for line in lines[1:]:
        indent = len(line) - len(line.lstrip(" "))
        if not line.strip() or indent > MAX_ENTRY_INDENT or indent % 2:
            continue  # a continuation of the description above
        if indent == 0:
            break  # the next top-level folder (examples/, benchmarks/, ...)
        depth = indent // 2
        assert depth <= len(stack), f"docs/ARCHITECTURE.md: {line.strip()!r} is indented under no folder"
        del stack[depth:]
        names = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
        for name in (part.strip() for part in names.split(",")):
            path = f"{stack[depth - 1]}/{name}"
            paths.append(path)
            if name.endswith("/"):
                stack.append(path.rstrip("/"))
    return paths


def tree() -> tuple[set[str], set[str]]:
    """``(modules, packages)``: every ``clim/**/*.py`` but ``__init__.py``, and every package folder under clim/."""
    modules, packages = set(), set()
    for path in PACKAGE.rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        relative = path.relative_to(REPO).as_posix()
        if path.name == "__init__.py":
            if path.parent != PACKAGE:
                packages.add(path.parent.relative_to(REPO).as_posix() + "/")
        else:
            modules.add(relative)
    return modules, packages


def test_the_parser_reads_nested_folders_and_lists():
    lines = ["clim/", "  a.py               what a does", "                       more about a",
             "  sub/", "    b.py, c.py", "    deeper/          d", "      e.py         e", "    f.py   f",
             "  g.py  g", "examples/          not clim"]
    assert named_paths(lines) == ["clim/a.py", "clim/sub/", "clim/sub/b.py", "clim/sub/c.py",
                                  "clim/sub/deeper/", "clim/sub/deeper/e.py", "clim/sub/f.py", "clim/g.py"]


def test_the_module_map_names_every_module_and_only_existing_ones():
    named = named_paths(module_map(DOC.read_text()))
    modules, packages = tree()
    named_modules = {path for path in named if path.endswith(".py")}
    named_folders = {path for path in named if path.endswith("/")}
    problems = []
    if missing := sorted(modules - named_modules):
        problems.append("modules in the tree that the map does not name: " + ", ".join(missing))
    if extra := sorted(named_modules - modules):
        problems.append("modules the map names that do not exist: " + ", ".join(extra))
    if missing := sorted(packages - named_folders):
        problems.append("packages in the tree that the map does not name: " + ", ".join(missing))
    if extra := sorted(f for f in named_folders if not (REPO / f).is_dir()):
        problems.append("folders the map names that do not exist: " + ", ".join(extra))
    others = [path for path in named if not path.endswith((".py", "/"))]
    if absent := sorted(path for path in others if not list(REPO.glob(path))):
        problems.append("other files the map names that do not exist: " + ", ".join(absent))
    assert not problems, "docs/ARCHITECTURE.md's module map is out of date:\n" + "\n".join(problems)
    assert "clim/config/schema.py" in named_modules and "clim/__main__.py" in named_modules and others  # the map was read


def _resolves(dotted: str) -> bool:
    """``clim.a.b.name``: the longest module prefix exists and the first non-module part appears in its source."""
    parts, folder = dotted.split("."), REPO
    for number, part in enumerate(parts):
        if (folder / part / "__init__.py").is_file():
            folder = folder / part
            continue
        if (folder / f"{part}.py").is_file():
            if number + 1 == len(parts):
                return True
            source, name = (folder / f"{part}.py").read_text(), parts[number + 1]
        else:
            source, name = (folder / "__init__.py").read_text(), part
        return re.search(rf"\b{re.escape(name)}\b", source) is not None
    return True


def test_every_clim_name_the_document_cites_resolves():
    cited = sorted(set(re.findall(r"\bclim(?:\.\w+)+", DOC.read_text())))
    assert len(cited) > 10, cited  # the document was read
    stale = [name for name in cited if not _resolves(name)]
    assert not stale, "docs/ARCHITECTURE.md cites names that no longer exist: " + ", ".join(stale)


def _listed(text: str, label: str) -> set[str]:
    """The ``clim.x`` names of the bullet that opens with ``- **label**`` (up to the next bullet or blank line)."""
    match = re.search(rf"^- \*\*{label}\*\*(.*?)(?=^- |^\s*$)", text, flags=re.M | re.S)
    assert match, f"docs/ARCHITECTURE.md has no bullet '- **{label}**'"
    return set(re.findall(r"`clim\.(\w+)`", match.group(1)))


def test_the_lists_of_packages_and_single_modules_match_the_tree():
    text = DOC.read_text()
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    listed_packages, listed_modules = _listed(text, "Packages"), _listed(text, "Single modules")
    problems = [f"{what}: {', '.join(sorted(names))}" for what, names in [
        ("packages not listed as packages", packages - listed_packages),
        ("listed as packages but no package", listed_packages - packages),
        ("single modules not listed as single modules", modules - listed_modules),
        ("listed as single modules but no module file", listed_modules - modules)] if names]
    assert not problems, "docs/ARCHITECTURE.md's lists of packages and single modules:\n" + "\n".join(problems)
