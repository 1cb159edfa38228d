"""``clim ablate``: the matrix, the statistics behind RESULTS.md, and one tiny end-to-end matrix."""

import json
import re

import pytest

from clim.cli import main
from clim.config import ConfigError, load_config
from clim.study.claims import (AGREES, DISAGREES, NOT_RUN, OPPOSITE_SINGLE, OPPOSITE_WITHIN, SAME_SINGLE, SAME_WITHIN,
                               Stat, agreement_summary, compare, format_stat, summarize)
from clim.study.matrix import SCALES, plan_runs, read_eval
from clim.study.runner import run_matrix

TABLE_6 = {f"{s}-{m}" for s in ("random", "knn", "kmeans", "knn_kmeans", "center_wise") for m in ("none", "cutmix")}


def test_matrix_has_every_variant_with_its_seed_count(tmp_path):
    runs = plan_runs("cpu", tmp_path, seeds_main=3, seeds_other=2)
    seeds: dict[str, list[int]] = {}
    for run in runs:
        seeds.setdefault(run.variant.name, []).append(run.seed)
        assert run.directory == tmp_path / "runs" / run.variant.name / f"seed{run.seed}"
    expected = (TABLE_6 - {"center_wise-cutmix"}) | {"mocov2", "clim", "mixup", "alpha1", "multires", "multicrop"}
    assert set(seeds) == expected
    assert {name: len(s) for name, s in seeds.items()} == {name: 3 if name in ("mocov2", "clim") else 2
                                                            for name in expected}
    assert len(runs) == 32
    assert all(run.seed == 0 for run in runs[:len(expected)])  # seed-major: one seed of everything first


def test_variants_differ_from_full_clim_only_in_their_keys(tmp_path):
    configs = {run.variant.name: load_config(run.spec["preset"], overrides=run.spec["overrides"])
               for run in plan_runs("cpu", tmp_path, 1, 1)}
    full = configs["clim"].method
    assert (full.name, full.selection, full.mixing, full.alpha, full.multicrop) == ("clim", "center_wise", "cutmix", 2.0,
                                                                                   False)
    assert full.resolutions is None  # one resolution: the image size
    assert configs["mocov2"].method.name == "mocov2"
    for name in TABLE_6 - {"center_wise-cutmix"}:
        selection, mixing = name.split("-")
        assert (configs[name].method.selection, configs[name].method.mixing) == (selection, mixing)
    assert configs["mixup"].method.mixing == "mixup"
    assert configs["alpha1"].method.alpha == 1.0
    assert configs["multires"].method.resolutions == list(SCALES["cpu"].resolutions)
    assert SCALES["cpu"].resolutions[0] == configs["clim"].data.image_size
    assert configs["multicrop"].method.multicrop is True
    epochs = {config.train.epochs for config in configs.values()}
    assert len(epochs) == 1  # equal epochs for every variant


@pytest.mark.parametrize("scale", list(SCALES))
def test_every_scale_builds_valid_configs_at_its_image_size(scale, tmp_path):
    runs = plan_runs(scale, tmp_path, 1, 1)  # loads and validates every run's config
    image_size = load_config(SCALES[scale].preset).data.image_size
    assert image_size in (None, SCALES[scale].resolutions[0])  # None: digits' native 8 px
    assert {run.spec["preset"] for run in runs} == {SCALES[scale].preset}


def test_only_selects_by_glob_and_rejects_unknown_patterns(tmp_path):
    runs = plan_runs("smoke", tmp_path, 3, 2, only="random-*,mocov2")
    assert sorted({run.variant.name for run in runs}) == ["mocov2", "random-cutmix", "random-none"]
    with pytest.raises(ConfigError, match="matches no variant"):
        plan_runs("smoke", tmp_path, only="nothing-like-this")
    with pytest.raises(ConfigError, match="unknown config key"):
        plan_runs("smoke", tmp_path, overrides=["train.epoch=3"])


def test_mean_std_formatting():
    stat = summarize([1.0, 2.0, 3.0, None])
    assert stat == Stat(2.0, 1.0, 3)
    assert format_stat(stat) == "2.00 ± 1.00 (n=3)"
    assert format_stat(summarize([0.61234]), 3) == "0.612 (n=1)"
    assert format_stat(summarize([])) == "—"


def test_agreement_verdicts_on_hand_made_numbers():
    high, low = Stat(70.0, 0.5, 3), Stat(67.0, 0.5, 3)
    assert compare(high, low) == (AGREES, "Δ = +3.00, spread 0.71")
    assert compare(low, high)[0] == DISAGREES
    assert compare(Stat(67.5, 0.5, 3), low)[0] == SAME_WITHIN  # 0.5 < sqrt(0.5² + 0.5²)
    assert compare(low, Stat(67.5, 0.5, 3))[0] == OPPOSITE_WITHIN
    assert compare(Stat(70.0, None, 1), low) == (SAME_SINGLE, "Δ = +3.00")
    assert compare(Stat(60.0, None, 1), low)[0] == OPPOSITE_SINGLE
    assert compare(None, low) == (NOT_RUN, "")
    summary = agreement_summary([AGREES, AGREES, DISAGREES, SAME_WITHIN, OPPOSITE_SINGLE, NOT_RUN])
    assert summary.startswith("Of the paper's 6 claims, 2 agree with our runs beyond the seed spread and 1 disagree")
    assert "1 rest on single seeds (0 same way, 1 other way" in summary and "1 lack runs" in summary


def test_smoke_matrix_end_to_end_then_resume_skips_finished_runs(tmp_path, capsys):
    out = tmp_path / "matrix"
    summary = run_matrix("smoke", out, seeds_main=1, seeds_other=1, only="mocov2,clim")
    assert (summary["runs"], summary["ran"], summary["failed"]) == (2, 2, [])
    results = summary["results"].read_text()
    for heading in ("## Headline", "## What agrees with the paper", "## Table 6", "## Table 7", "## Table 9",
                    "## Table 10", "## Table 12", "## Machine"):
        assert heading in results
    clim = json.loads((out / "runs" / "clim" / "seed0" / "eval.json").read_text())
    assert 0.0 <= clim["positive_precision"] <= 1.0  # a refresh happened and was read from metrics.jsonl
    assert f"{clim['linear_top1']:.2f} (n=1)" in results  # real numbers, from the run's eval.json
    assert re.search(r"CLIM beats MoCo v2 at equal epochs .*\*\*(same|opposite) direction, one seed\*\*", results)
    assert (out / "ablation_plots" / "knn_over_epochs.png").stat().st_size > 0
    assert (out / "ablation_plots" / "positive_precision.png").stat().st_size > 0
    assert "[2/2] clim seed0: done" in capsys.readouterr().out

    checkpoint = out / "runs" / "clim" / "seed0" / "checkpoint.pt"
    written = checkpoint.stat().st_mtime_ns
    code = main(["ablate", "--scale", "smoke", "--out", str(out), "--seeds-main", "1", "--seeds-other", "1",
                 "--only", "mocov2,clim"])
    assert code == 0
    assert "2 done, 0 to run" in capsys.readouterr().out
    assert checkpoint.stat().st_mtime_ns == written  # nothing retrained
    changed = plan_runs("smoke", out, 1, 1, only="clim", overrides=["train.lr=0.01"])[0]
    assert read_eval(changed) is None  # another spec in the same folder is not taken as finished


def test_results_name_no_machine_path(tmp_path):
    """RESULTS.md is committed: an absolute --out / --results shows as its last name only."""
    import argparse

    from clim.study.cli import command_line
    from clim.study.results import write_results

    out = tmp_path / "matrix-cpu"
    text = write_results("smoke", out, [], path=tmp_path / "RESULTS.md").read_text()
    assert str(tmp_path) not in text and "`matrix-cpu`" in text and "--out matrix-cpu" in text
    args = argparse.Namespace(scale="cpu", out=str(out), seeds_main=3, seeds_other=2, overrides=["train.epochs=2"],
                              results=str(tmp_path / "docs" / "RESULTS.md"))
    line = command_line(args)
    assert str(tmp_path) not in line
    assert line == ("clim ablate --scale cpu --out matrix-cpu --seeds-main 3 --seeds-other 2 --set train.epochs=2 "
                    "--results RESULTS.md")
    args.out, args.results = "runs/m", None  # relative paths stay as given
    assert "--out runs/m " in command_line(args)
