"""Documentation that runs and stays true: the README's Python blocks, the examples, docs/API.md as
scripts/api_docs.py writes it from the docstrings; the README short, its long sections at their new
homes under docs/, every relative link and anchor resolving, every "METHOD §N" of the code pointing
at a section of docs/METHOD.md, nothing pointing outside the repository, and no tracker numbers."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def readme_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", (ROOT / "README.md").read_text(), flags=re.M | re.S)


def test_the_readme_has_its_own_loop_example():
    own_loop = [block for block in readme_blocks() if "clim.PositiveBank" in block]
    assert len(own_loop) == 1 and len(own_loop[0].splitlines()) <= 40


@pytest.mark.parametrize("number", range(len(readme_blocks())))
def test_readme_python_block_runs_as_written(number, tmp_path):
    script = tmp_path / f"readme_{number}.py"
    script.write_text(readme_blocks()[number])
    result = _run([str(script)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


def _epoch_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("epoch ")]


def test_simclr_example_runs_with_in_batch_negatives():
    result = _run([str(EXAMPLES / "simclr.py"), "--epochs", "3"], EXAMPLES)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = _epoch_lines(result.stdout)
    assert any("positives refreshed, precision" in line for line in lines) and len(lines) == 4


def test_lightly_example_runs():
    pytest.importorskip("lightly", reason="lightly is not installed (pip install -e '.[bench]')")
    result = _run([str(EXAMPLES / "lightly_moco.py"), "--epochs", "3"], EXAMPLES)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = _epoch_lines(result.stdout)
    assert any("positives refreshed, precision" in line for line in lines) and len(lines) == 4


def test_api_reference_is_fresh():
    spec = importlib.util.spec_from_file_location("api_docs", ROOT / "scripts" / "api_docs.py")
    api_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(api_docs)
    assert api_docs.API_MD.read_text() == api_docs.render(), "docs/API.md is stale: run python scripts/api_docs.py"


# ---- the README is a front page; what it used to hold lives under docs/

DOCS = ROOT / "docs"
MARKDOWN = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted(DOCS.glob("*.md"))]


def test_the_readme_is_short_and_keeps_its_generated_block_and_links():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200, f"README.md has {len(readme.splitlines())} lines (at most 200)"
    assert readme.count("<!-- clim ablate headline: begin") == 1 and readme.count("<!-- clim ablate headline: end -->") == 1
    for page in ("docs/USAGE.md", "docs/CONFIG.md", "docs/METHOD.md", "docs/DEMO.md", "docs/ABLATIONS.md",
                 "docs/API.md", "docs/ARCHITECTURE.md", "RESULTS.md", "BENCHMARKS.md", "LICENSE", "CITATION.cff"):
        assert f"]({page})" in readme, f"README.md does not link {page}"
    assert "make demo" in readme and "clim pretrain" in readme and "```bibtex" in readme


@pytest.mark.parametrize("page, phrases", [
    ("USAGE.md", ["**Resume**", "**One run per folder.**", "**What a NaN keeps.**", "**Disk full.**",
                  "**Multi-GPU and multi-node**", "## Datasets", "## Evaluation and transfer", "`clim inspect`"]),
    ("DEMO.md", ["SIGSTOP", "UTC", "load average", "OMP_NUM_THREADS=1 python -m clim demo --out runs/demo"]),
    ("ABLATIONS.md", ["results/ablate-cpu/<variant>/seed<k>.json", "--report", "paired"]),
    ("METHOD.md", ["## Where clim departs from this specification", "Marsaglia–Tsang"]),
    ("CONFIG.md", ["| `mocov2-imagenet-r50` |", "exit code 2"]),
])
def test_each_moved_section_is_at_its_new_home(page, phrases):
    text = (DOCS / page).read_text()
    assert [phrase for phrase in phrases if phrase not in text] == []


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    body = re.sub(r"^```.*?^```$", "", markdown, flags=re.M | re.S)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.*)$", body, flags=re.M)}


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for page in MARKDOWN:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved.read_text()):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == []


def test_method_sections_cited_by_the_code_exist_in_docs_method():
    sections = set(re.findall(r"^## (\d+)\. ", (DOCS / "METHOD.md").read_text(), flags=re.M))
    assert sections == {str(n) for n in range(1, 7)}
    cited = {}
    for path in sorted((ROOT / "clim").rglob("*.py")):
        for number in re.findall(r"METHOD §(\d+)", path.read_text()):
            cited.setdefault(number, path.relative_to(ROOT).as_posix())
    assert len(cited) >= 5 and {number: where for number, where in cited.items() if number not in sections} == {}


def _project_text_files() -> list[Path]:
    files = [*MARKDOWN, ROOT / "RESULTS.md", ROOT / "Makefile", ROOT / "pyproject.toml"]
    for folder in ("clim", "benchmarks", "scripts", "examples"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in {".py", ".md", ".yaml", ".sh"}]
    return [p for p in files if p.is_file() and "__pycache__" not in p.parts]


def test_nothing_points_outside_the_repository():
    outside = [p.relative_to(ROOT).as_posix() for p in _project_text_files() if "../shared" in p.read_text()]
    assert outside == [], "these files point at ../shared; point at docs/METHOD.md instead"


def test_no_tracker_numbers_in_the_package_and_the_docs():
    pattern = re.compile(r"\bissues? \d", re.I)
    files = [*MARKDOWN, *(ROOT / "clim").rglob("*.py")]
    found = [f"{p.relative_to(ROOT)}:{n}" for p in files for n, line in enumerate(p.read_text().splitlines(), 1)
             if pattern.search(line)]
    assert found == [], "say what the rule is instead of an issue number: " + ", ".join(found)


def test_license_and_citation_match_the_package_and_the_paper():
    import yaml

    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License") and "the clim authors" in license_text
    assert 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text()
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    paper = citation["preferred-citation"]
    assert paper["title"] == "Center-wise Local Image Mixture for Contrastive Representation Learning"
    assert [a["family-names"] for a in paper["authors"]] == ["Li", "Zhang", "Xiong"]
    assert "2011.02697" in str(paper.get("identifiers", "")) + str(paper.get("url", ""))
    assert paper["title"] in (ROOT / "README.md").read_text() and "2011.02697" in (ROOT / "README.md").read_text()
