"""Every script in benchmarks/ and scripts/ runs here at a tiny size on the CPU, so that the ones the GPU
check (benchmarks/gpu_check.sh) runs cannot break unseen between the rare runs on a GPU machine.

The scripts run as a user runs them (a subprocess, their command line), not through their internals,
so that moving code inside ``clim`` keeps these tests meaningful. ``gpu_check.sh --plan`` is parsed
here: every command it would run names a script that exists and whose command line its parser (and,
for ``clim pretrain`` arguments, ``clim config``) accepts. The GPU machine has no faiss, lightly or
kornia: the scripts and the command lines are checked with those imports blocked.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT_FILES = sorted(p.relative_to(REPO).as_posix()
                      for p in [*(REPO / "benchmarks").glob("*.py"), *(REPO / "scripts").glob("*.py")])
OPTIONAL = ("faiss", "lightly", "kornia")  # absent on the GPU machine

# Where each script runs at a tiny size (a test must name the script's file).
SMOKE_TESTS = {
    "benchmarks/amp_curve.py": "tests/test_amp_curve_smoke.py",
    "benchmarks/datapath.py": "tests/test_scripts_smoke.py",
    "benchmarks/op_count.py": "tests/test_op_count_smoke.py",
    "benchmarks/quality.py": "tests/test_quality.py",
    "benchmarks/resume_check.py": "tests/test_scripts_smoke.py",
    "benchmarks/selection.py": "tests/test_scripts_smoke.py",
    "benchmarks/throughput.py": "tests/test_throughput_smoke.py",
    "benchmarks/trainer_rate.py": "tests/test_scripts_smoke.py",
    "scripts/api_docs.py": "tests/test_scripts_smoke.py",
    "scripts/build_fmnist_mini.py": "tests/test_scripts_smoke.py",
    "scripts/build_glyphs.py": "tests/data/test_glyphs.py",
    "scripts/config_table.py": "tests/test_config_table.py",
}

# `clim pretrain` on all of digits (1,437 images of 8 px) with a tiny network: an epoch is 11 steps.
PRETRAIN = ["--preset", "demo-cpu", "--set", "data.name=digits", "--set", "data.image_size=null",
            "--set", "data.num_workers=0", "--set", "model.backbone=resnet10_w4", "--set", "model.small_stem=true",
            "--set", "model.queue_size=256", "--set", "train.batch_size=128", "--set", "train.knn_every=0"]
NUMBER = r"(\d+(?:\.\d+)?)"


def _env(**extra: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _run(args: list, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                            env=_env(**env), cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def without_optional(tmp_path_factory) -> str:
    """A PYTHONPATH on which ``import faiss`` / ``lightly`` / ``kornia`` raise ImportError, as on the GPU
    machine (it holds on in the subprocesses the scripts start, unlike ``sys.modules[name] = None``)."""
    root = tmp_path_factory.mktemp("blocked")
    for name in OPTIONAL:
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked for this test')\n")
    return os.pathsep.join([str(root), str(REPO)])


@pytest.fixture(scope="module")
def jpeg_root(tmp_path_factory) -> Path:
    """Where the benchmarks write their random JPEGs (made once, shared by the tests of this module)."""
    return tmp_path_factory.mktemp("jpegs")


def test_every_script_has_a_smoke_test():
    missing = sorted(set(SCRIPT_FILES) - set(SMOKE_TESTS))
    assert not missing, f"no smoke test for {missing}: add one (tiny, CPU) and list it in SMOKE_TESTS"
    for script in SCRIPT_FILES:
        test = REPO / SMOKE_TESTS[script]
        assert test.is_file() and Path(script).name in test.read_text(), (script, SMOKE_TESTS[script])


def test_datapath_prints_the_three_paths(jpeg_root):
    out = _run(["benchmarks/datapath.py", "--image-size", 32, "--n", 20, "--batch-size", 4, "--batches", 1,
                "--rounds", 1, "--root", jpeg_root]).stdout
    assert out.startswith("machine: ") and "data: 20 random JPEGs 256-512 px -> 32 px views" in out
    rows = dict(re.findall(rf"^(loader|device-workers|device \(all on CPU\))\s+{NUMBER}  [\d. ]+$", out, re.M))
    assert set(rows) == {"loader", "device-workers", "device (all on CPU)"}, out
    assert all(0 < float(rate) < math.inf for rate in rows.values())
    ratio = re.search(rf"^worker CPU per image, loader / device: {NUMBER}x$", out, re.M)
    assert ratio and float(ratio.group(1)) > 0, out


def test_throughput_on_the_gpu_check_folder_path(jpeg_root):
    """gpu_check's folder step (device augmentation, decode auto) and its extras (--sync-debug, --profile,
    NCHW without batched views) on the CPU; the cifar-shaped steps run in test_throughput_smoke.py."""
    out = _run(["benchmarks/throughput.py", "--device", "cpu", "--dataset", "jpeg-folder", "--root", jpeg_root,
                "--n", 20, "--backbone", "resnet10_w4", "--image-size", 32, "--batch-size", 8, "--steps", 1,
                "--warmup", 1, "--rounds", 1, "--queue-size", 16, "--workers", 1, "--variants", "ours-mocov2",
                "--augment", "device", "--decode", "auto", "--sync-debug", "--profile", 1,
                "--set", "data.num_workers=0", "--set", "train.channels_last=false",
                "--set", "train.batch_views=false"]).stdout
    assert "profile of 1 steps of ours-mocov2 (top operators by cpu_time_total):" in out
    rate = re.search(rf"^ours-mocov2\s+{NUMBER}\s+{NUMBER}\s", out, re.M)
    assert rate and 0 < float(rate.group(1)) < math.inf, out


def test_trainer_rate_prints_every_epoch(tmp_path):
    out = _run(["benchmarks/trainer_rate.py", "--out", tmp_path / "run", "--", *PRETRAIN,
                "--set", "train.epochs=2"]).stdout
    epochs = re.findall(rf"^images/s of epoch (\d+): (\d+) \({NUMBER} s, loss {NUMBER}\)$", out, re.M)
    assert [int(e[0]) for e in epochs] == [1, 2], out
    assert all(int(rate) > 0 and float(seconds) > 0 and math.isfinite(float(loss)) for _, rate, seconds, loss in epochs)
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2


def test_resume_check_kills_resumes_and_compares(tmp_path):
    """Killed once it has saved a checkpoint inside the (only) epoch, then run again: the same tensors
    as the uninterrupted run (deterministic on the CPU)."""
    out = _run(["benchmarks/resume_check.py", "--out", tmp_path, "--kill-epoch", 0, "--timeout", 200, "--",
                *PRETRAIN, "--set", "train.epochs=1", "--set", "train.deterministic=true",
                "--set", "train.checkpoint_every_minutes=0.000001", "--set", "train.log_every=4"]).stdout
    assert re.search(r"^killed inside epoch 1, its checkpoint at step \d+; running it again$", out, re.M), out
    assert "resumed run: exit code 0, resumed from that step: True" in out
    counts = re.findall(r"^(model tensors|optimiser buffers): (\d+) of (\d+) bit-identical", out, re.M)
    assert [name for name, *_ in counts] == ["model tensors", "optimiser buffers"], out
    assert all(same == total != "0" for _, same, total in counts)
    assert out.rstrip().endswith("resume_check: identical")


@pytest.mark.parametrize("faiss", ["blocked", "installed"])
def test_selection_with_and_without_faiss(faiss, without_optional):
    env = {}
    if faiss == "blocked":
        env["PYTHONPATH"] = without_optional
    else:
        pytest.importorskip("faiss")
    out = _run(["benchmarks/selection.py", "--n", 600, "--m", 12, "--k", 8, "--p", 4, "--true-clusters", 20],
               **env).stdout
    assert re.search(r"^data: N=600 d=128 m=12 k=8 P=4 strategy=center_wise backend=auto$", out, re.M), out
    if faiss == "blocked":
        assert "| faiss not installed |" in out and "plain faiss: skipped" in out and "backend torch" in out
    else:
        ratio = re.search(rf"^ratio select_positives / plain faiss: {NUMBER}", out, re.M)
        assert ratio and float(ratio.group(1)) > 0 and "backend faiss" in out, out
    seconds = re.search(rf"^select_positives: {NUMBER} s$", out, re.M)
    split = re.search(rf"^split: kmeans {NUMBER} s \| knn {NUMBER} s \| rule {NUMBER} s", out, re.M)
    assert seconds and split and all(math.isfinite(float(v)) for v in split.groups()), out
    assert re.search(r"^diagnostics: \{.+\}$", out, re.M), out


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _load(script: str):
    spec = importlib.util.spec_from_file_location(Path(script).stem, REPO / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_fmnist_mini_from_idx_files(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for stem, n in (("train", 60), ("t10k", 30)):
        _write_idx(tmp_path / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{stem}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    out_file = tmp_path / "mini.npz"
    _load("scripts/build_fmnist_mini.py").main(["--source", str(tmp_path), "--out", str(out_file),
                                                "--train-per-class", "3", "--test-per-class", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"wrote {out_file}" and lines[1].startswith(f"size: {out_file.stat().st_size} bytes")
    assert lines[2] == f"sha256: {hashlib.sha256(out_file.read_bytes()).hexdigest()}"
    with np.load(out_file) as arrays:
        assert arrays["train_images"].shape == (30, 28, 28) and arrays["test_images"].shape == (20, 28, 28)
        assert np.bincount(arrays["train_labels"]).tolist() == [3] * 10


def test_api_docs_writes_and_checks(tmp_path, monkeypatch, capsys):
    """scripts/api_docs.py's main() on another file: --check passes on what it wrote and fails on an edited
    file (tests/test_docs.py checks the committed docs/API.md against its render())."""
    api_docs = _load("scripts/api_docs.py")
    api_md = tmp_path / "API.md"
    monkeypatch.setattr(api_docs, "API_MD", api_md)
    assert api_docs.main([]) == 0 and capsys.readouterr().out == f"wrote {api_md}\n"
    assert api_md.read_text().startswith("# Python API") and "## `clim." in api_md.read_text()
    assert api_docs.main(["--check"]) == 0 and "is up to date" in capsys.readouterr().out
    api_md.write_text(api_md.read_text() + "edited\n")
    assert api_docs.main(["--check"]) == 1 and "is stale" in capsys.readouterr().out


# ------------------------------------------------------------------------------ gpu_check.sh --plan

# Runs each script's module code, then its argument parsing only (the script's own parse_args function
# when it has one, else main() up to its first ArgumentParser.parse_args), for JSON [script, args,
# pretrain args or null] items on stdin; args null: import only. Prints one JSON result per item.
_PARSE_ONLY = r'''
import argparse, contextlib, io, json, runpy, sys, traceback
from pathlib import Path


class Parsed(BaseException):
    pass


original = argparse.ArgumentParser.parse_args


def parse_and_stop(self, args=None, namespace=None):
    raise Parsed(vars(original(self, args, namespace)))


for script, args, pretrain in json.load(sys.stdin):
    sys.path.insert(0, str(Path(script).resolve().parent))
    result, stderr = {"script": script}, io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
            namespace = runpy.run_path(script, run_name="parse_only")
            parser = namespace.get("parse_args")
            if args is None:
                parsed = {}
            elif callable(parser) and getattr(parser, "__module__", None) == "parse_only":
                parsed = vars(parser(args))
            else:
                sys.argv = [script, *args]
                argparse.ArgumentParser.parse_args = parse_and_stop
                try:
                    namespace["main"]()
                    raise RuntimeError("main() returned without parsing its arguments")
                except Parsed as done:
                    parsed = done.args[0]
                finally:
                    argparse.ArgumentParser.parse_args = original
            if pretrain is not None:
                from clim.cli import main as clim_main

                if clim_main(["config", *pretrain]) != 0:
                    raise RuntimeError("clim config refused the pretrain arguments")
        result["parsed"] = {key: repr(value) for key, value in parsed.items()}
    except SystemExit as stop:
        result["error"] = f"exit {stop.code}: {stderr.getvalue()[-2000:]}"
    except BaseException:
        result["error"] = traceback.format_exc()[-3000:] + stderr.getvalue()[-1000:]
    print(json.dumps(result), flush=True)
'''

STEP = re.compile(r"^step (\S+) (\d+)s (\S+)(?: \[([^\]]*)\])?: (.+)$")


@pytest.fixture(scope="module")
def plan(tmp_path_factory) -> dict:
    """``gpu_check.sh --plan``: its output and steps {name: (limit_s, output_file, condition, argv)}."""
    out = tmp_path_factory.mktemp("gpu_check") / "out"
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--plan"], capture_output=True, text=True,
                            timeout=60, cwd=REPO, env=_env(OUT=str(out), PYTHON="python3"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert not out.exists(), "--plan wrote to $OUT"
    steps = {}
    for line in result.stdout.splitlines():
        match = STEP.match(line)
        if match:
            name, limit, file, condition, command = match.groups()
            assert name not in steps, f"step {name} twice"
            steps[name] = (int(limit), file, condition, shlex.split(command))
    return {"stdout": result.stdout, "steps": steps}


def test_gpu_check_plan_lists_every_step_within_the_budget(plan):
    lines = plan["stdout"].splitlines()
    header = re.match(r"gpu_check plan \(nothing is run\): budget (\d+)s, set-up (\d+)s, set-up and step limits (\d+)s",
                      lines[0])
    assert header, lines[0]
    budget, setup, planned = map(int, header.groups())
    steps = plan["steps"]
    assert len(steps) == sum(line.startswith("step ") for line in lines) >= 10
    assert list(steps)[:3] == ["throughput-32px", "resume-cuda", "selection"]  # most important first
    unconditional = sum(limit for name, (limit, *_) in steps.items() if name != "compile")
    assert setup + unconditional == planned <= budget
    assert steps["compile"][2].startswith("only if >= ")
    assert all(re.fullmatch(r"[\w.]+\.txt", file) for _, file, _, _ in steps.values())


def _python_steps(steps: dict) -> list[tuple[str, str, list[str], list[str] | None]]:
    """(step, script, its args, the `clim pretrain` args after `--` or None) of each python script step."""
    items = []
    for name, (_, _, _, argv) in steps.items():
        while argv and (argv[0] == "env" or re.fullmatch(r"[A-Z_]+=.*", argv[0])):
            argv = argv[1:]
        assert argv[0] == "python3", (name, argv)
        if argv[1] == "-m":
            continue
        script, args = argv[1], argv[2:]
        assert (REPO / script).is_file(), f"step {name}: {script} does not exist"
        pretrain = None
        if "--" in args and Path(script).name in ("trainer_rate.py", "resume_check.py"):
            pretrain = args[args.index("--") + 1:]
        items.append((name, script, args, pretrain))
    return items


def test_gpu_check_commands_parse_without_the_optional_packages(plan, without_optional):
    """Every script imports without faiss / lightly / kornia; every python step's command line is
    accepted by its script's parser, and the `clim pretrain` part by `clim config`."""
    items = _python_steps(plan["steps"])
    assert {Path(script).name for _, script, _, _ in items} >= {"throughput.py", "resume_check.py", "selection.py",
                                                                "trainer_rate.py", "amp_curve.py", "op_count.py"}
    jobs = [[script, args, pretrain] for _, script, args, pretrain in items]
    jobs += [[script, None, None] for script in SCRIPT_FILES]
    result = subprocess.run([sys.executable, "-c", _PARSE_ONLY], input=json.dumps(jobs), capture_output=True,
                            text=True, timeout=180, cwd=REPO, env=_env(PYTHONPATH=without_optional))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(results) == len(jobs), result.stdout + result.stderr
    for (name, script, args, _), outcome in zip(items, results):
        assert "error" not in outcome, f"step {name}: {shlex.join([script, *args])}\n{outcome['error']}"
        assert outcome["parsed"].get("device") in (None, "'cuda'"), (name, outcome)
    for script, outcome in zip(SCRIPT_FILES, results[len(items):]):
        assert "error" not in outcome, f"{script} does not import without {OPTIONAL}:\n{outcome['error']}"


def test_gpu_check_pytest_step_selects_the_gpu_tests(plan, tmp_path):
    """The CUDA-tests step: its pytest options parse and its -k picks tests by name (here on a two-test file)."""
    argv = plan["steps"]["cuda-tests"][3]
    assert argv[1:3] == ["-m", "pytest"] and (REPO / argv[-1]).is_dir(), argv
    (tmp_path / "test_names.py").write_text("def test_on_gpu():\n    pass\n\n\ndef test_elsewhere():\n    pass\n")
    result = subprocess.run([sys.executable, *argv[1:-1], "--collect-only", "--noconftest", "test_names.py"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path, env=_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test_on_gpu" in result.stdout and "test_elsewhere" not in result.stdout
