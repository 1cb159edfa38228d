"""The demo's "next:" line runs as printed: ``make demo`` does not put the venv's ``clim`` on PATH, so
the hint spells the script's path unless ``clim`` on PATH is that very script."""

import shutil
import subprocess
import sys

import pytest

import clim.demo as demo


@pytest.fixture
def venv(tmp_path, monkeypatch):
    """A fake environment: tmp/.venv/bin/{python, clim}, the working directory tmp."""
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "clim").write_text("#!/bin/sh\n")
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.chdir(tmp_path)
    return bin_dir


def test_hint_uses_the_venv_script_when_clim_is_not_on_path(venv, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert demo.next_hint("runs/demo") == ("next: .venv/bin/clim inspect runs/demo; "
                                           ".venv/bin/clim eval knn --ckpt runs/demo/checkpoint.pt")


def test_hint_says_plain_clim_when_path_finds_this_venvs_script(venv, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: str(venv / name))
    assert demo.next_hint("runs/demo").startswith("next: clim inspect runs/demo; clim eval knn")


def test_another_clim_on_path_is_not_trusted(venv, tmp_path, monkeypatch):
    other = tmp_path / "elsewhere" / "clim"
    other.parent.mkdir()
    other.write_text("#!/bin/sh\n")
    monkeypatch.setattr(shutil, "which", lambda name: str(other))
    assert demo.clim_command() == ".venv/bin/clim"
    monkeypatch.chdir(other.parent)  # outside the working directory: the absolute path
    assert demo.clim_command() == str(venv / "clim")


def test_without_a_clim_script_the_hint_uses_python_dash_m(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "my python" / "python3"))
    assert demo.clim_command() == f"'{tmp_path}/my python/python3' -m clim"


def test_make_demo_prints_where_clim_is_and_make_inspect_runs_it():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    plan = subprocess.run(["make", "-n", "--no-print-directory", "demo", "inspect"],
                          capture_output=True, text=True, cwd=demo.Path(demo.__file__).resolve().parents[1])
    assert "clim is .venv/bin/clim (not on PATH" in plan.stdout, plan.stdout + plan.stderr
    assert plan.stdout.rstrip().endswith(".venv/bin/clim inspect runs/demo"), plan.stdout


def test_pretraining_ends_with_the_same_runnable_command(venv, monkeypatch):
    from clim.summary import output_paths

    monkeypatch.setattr(shutil, "which", lambda name: None)
    last = output_paths("runs/x").splitlines()[-1]
    assert last.startswith("next: .venv/bin/clim report ") and " .venv/bin/clim eval knn --ckpt " in last
