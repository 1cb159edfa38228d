"""``clim ablate``: the matrix, the statistics behind RESULTS.md, and one tiny end-to-end matrix."""

import json
import math
import re

import pytest

from clim.cli import main
from clim.config import ConfigError, load_config
from clim.study.claims import (AGREES, DISAGREES, INCONCLUSIVE, Stat, agreement_summary, format_stat, paired,
                               summarize)
from clim.study.matrix import GROUPS, SCALES, plan_runs, read_record
from clim.study.runner import run_matrix

TABLE_6 = {f"{s}-{m}" for s in ("random", "knn", "kmeans", "knn_kmeans", "center_wise") for m in ("none", "cutmix")}


def test_matrix_has_every_variant_with_its_group_seed_count_in_priority_order(tmp_path):
    runs = plan_runs("cpu", tmp_path / "out", tmp_path / "records")
    seeds: dict[str, list[int]] = {}
    for run in runs:
        seeds.setdefault(run.variant.name, []).append(run.seed)
        assert run.directory == tmp_path / "out" / "runs" / run.variant.name / f"seed{run.seed}"
        assert run.record_path == tmp_path / "records" / run.variant.name / f"seed{run.seed}.json"
    table8 = {f"m{m}-k{k}" for m in (50, 100, 200) for k in (20, 40, 60)} - {"m100-k40"}
    expected = ((TABLE_6 - {"center_wise-cutmix"}) | table8 |
                {"mocov2", "clim", "mocov2-time", "mixup", "alpha1", "alpha1.5", "alpha2.5", "multires", "multicrop"})
    assert set(seeds) == expected
    group = {run.variant.name: run.variant.group for run in runs}
    assert {name: len(s) for name, s in seeds.items()} == {name: GROUPS[group[name]] for name in expected}
    assert GROUPS == {"headline": 8, "table6": 3, "table9_10": 3, "table7": 2, "table8": 2}
    order = [run.variant.group for run in runs]
    assert order == sorted(order, key=list(GROUPS).index)  # group after group, in priority order
    assert [run.label for run in runs[:6]] == ["mocov2 seed0", "clim seed0", "mocov2-time seed0", "mocov2 seed1",
                                              "clim seed1", "mocov2-time seed1"]  # seed-major inside a group
    capped = plan_runs("cpu", tmp_path, tmp_path, seeds=1)
    assert len(capped) == len(expected) and {run.seed for run in capped} == {0}


def test_variants_differ_from_full_clim_only_in_their_keys(tmp_path):
    configs = {run.variant.name: load_config(run.spec["preset"], overrides=run.spec["overrides"])
               for run in plan_runs("cpu", tmp_path, tmp_path, seeds=1)}
    full = configs["clim"].method
    assert (full.name, full.selection, full.mixing, full.alpha, full.multicrop) == ("clim", "center_wise", "cutmix", 2.0,
                                                                                   False)
    assert full.resolutions is None  # one resolution: the image size
    assert configs["mocov2"].method.name == "mocov2"
    for name in TABLE_6 - {"center_wise-cutmix"}:
        selection, mixing = name.split("-")
        assert (configs[name].method.selection, configs[name].method.mixing) == (selection, mixing)
    assert configs["mixup"].method.mixing == "mixup"
    assert [configs[f"alpha{a}"].method.alpha for a in ("1", "1.5", "2.5")] == [1.0, 1.5, 2.5]
    assert configs["multires"].method.resolutions == list(SCALES["cpu"].resolutions)
    assert SCALES["cpu"].resolutions[0] == configs["clim"].data.image_size
    assert configs["multicrop"].method.multicrop is True
    assert (configs["m50-k60"].method.num_clusters, configs["m50-k60"].method.knn_k) == (50, 60)
    assert configs["clim"].method.num_clusters is None and 10000 // 100 == SCALES["cpu"].clusters[1]
    time = configs.pop("mocov2-time")
    assert (time.method.name, time.train.epochs) == ("mocov2", SCALES["cpu"].equal_time_epochs)
    epochs = {config.train.epochs for config in configs.values()}
    assert epochs == {20}  # equal epochs for every other variant


@pytest.mark.parametrize("scale", list(SCALES))
def test_every_scale_builds_valid_configs_at_its_image_size(scale, tmp_path):
    runs = plan_runs(scale, tmp_path, tmp_path, seeds=1)  # loads and validates every run's config
    image_size = load_config(SCALES[scale].preset).data.image_size
    assert image_size in (None, SCALES[scale].resolutions[0])  # None: digits' native 8 px
    assert {run.spec["preset"] for run in runs} == {SCALES[scale].preset}


def test_only_selects_by_glob_or_group_and_rejects_unknown_patterns(tmp_path):
    runs = plan_runs("smoke", tmp_path, tmp_path, 2, only="random-*,mocov2")
    assert sorted({run.variant.name for run in runs}) == ["mocov2", "random-cutmix", "random-none"]
    assert {run.variant.name for run in plan_runs("smoke", tmp_path, tmp_path, 1, only="table9_10")} == {
        "alpha1", "alpha1.5", "alpha2.5", "mixup"}
    with pytest.raises(ConfigError, match="matches no variant"):
        plan_runs("smoke", tmp_path, tmp_path, only="nothing-like-this")
    with pytest.raises(ConfigError, match="unknown config key"):
        plan_runs("smoke", tmp_path, tmp_path, overrides=["train.epoch=3"])


def test_mean_std_formatting():
    stat = summarize([1.0, 2.0, 3.0, None])
    assert stat == Stat(2.0, 1.0, 3)
    assert format_stat(stat) == "2.00 ± 1.00 (n=3)"
    assert format_stat(summarize([0.61234]), 3) == "0.612 (n=1)"
    assert format_stat(summarize([])) == "—"


def test_paired_statistics_match_a_written_out_t_test():
    better = {0: 81.0, 1: 82.5, 2: 80.0, 3: 83.0}
    worse = {0: 80.0, 1: 81.0, 2: 80.5, 3: 81.0, 7: 99.0}  # seed 7 has no partner: left out
    result = paired(better, worse)
    differences = [1.0, 1.5, -0.5, 2.0]
    mean = sum(differences) / 4
    sd = (sum((d - mean) ** 2 for d in differences) / 3) ** 0.5
    t975 = 3.182446305284263  # Student t, 3 degrees of freedom, 97.5 % quantile (tables)
    assert result.n == 4 and result.mean == pytest.approx(mean)
    assert (result.low, result.high) == (pytest.approx(mean - t975 * sd / 2), pytest.approx(mean + t975 * sd / 2))
    t = mean / (sd / 2)  # Student t with 3 degrees of freedom has a closed-form CDF
    cdf = 0.5 + (t / 3 ** 0.5 / (1 + t * t / 3) + math.atan(t / 3 ** 0.5)) / math.pi
    assert result.p == pytest.approx(2 * (1 - cdf))
    assert (result.wins, result.losses) == (3, 1)
    assert result.verdict == INCONCLUSIVE  # the interval contains 0
    clear = paired({s: 80.0 + s % 2 * 0.1 for s in range(8)}, {s: 78.0 for s in range(8)})
    assert clear.low > 0 and clear.verdict == AGREES
    assert paired({s: 78.0 for s in range(8)}, {s: 80.0 + s % 2 * 0.1 for s in range(8)}).verdict == DISAGREES
    assert paired({0: 1.0}, {0: 0.0}).verdict == INCONCLUSIVE  # one pair: no interval
    assert paired({0: 1.0}, {1: 0.0}) is None
    summary = agreement_summary([AGREES, AGREES, DISAGREES, INCONCLUSIVE, "not run"])
    assert summary.startswith("Of the paper's 5 claims tested here, 2 agree") and "1 disagree" in summary


def test_smoke_matrix_end_to_end_then_resume_skips_recorded_runs(tmp_path, capsys):
    out, records = tmp_path / "out", tmp_path / "records"
    summary = run_matrix("smoke", out, records, seeds=1, only="mocov2,clim", jobs=2)
    assert (summary["runs"], summary["ran"], summary["failed"]) == (2, 2, [])
    record = json.loads((records / "clim" / "seed0.json").read_text())
    assert record["spec"]["variant"] == "clim" and record["seed"] == 0 and record["commit"]
    metrics = record["metrics"]
    assert 0.0 <= metrics["positive_precision"] <= 1.0  # a refresh happened and was read from the history
    assert 0 < metrics["random_init_knn_k20_top1"] <= 100 and 0 < record["cpu_minutes"] < 10
    sweep = {float(lr): top1 for lr, top1 in metrics["linear_sweep"].items()}
    assert metrics["linear_lr"] == max(sweep, key=lambda lr: (sweep[lr], -lr))  # the best held-out lr
    assert [point["epoch"] for point in record["curve"]] == [1, 2] and "machine" in record
    output = capsys.readouterr().out
    assert "clim seed0: done" in output and "2 to run, 2 at a time" in output
    # each refresh drawn into the run folder, as `clim pretrain` draws it (no part of the record)
    assert list((out / "runs" / "clim" / "seed0" / "positives").glob("epoch_*.png"))
    assert not any("positives" in key or "png" in key for key in record)

    # RESULTS.md comes from the records alone: the run folders may be gone
    import shutil

    shutil.rmtree(out)
    assert main(["ablate", "--scale", "smoke", "--records", str(records), "--seeds", "1", "--report",
                 "--results", str(tmp_path / "RESULTS.md")]) == 0
    results = (tmp_path / "RESULTS.md").read_text()
    for heading in ("## Headline", "## Does the regime learn?", "## The paper's claims", "## Table 6", "## Table 7",
                    "## Table 8", "## Table 9", "## Table 10", "## Table 12", "## The linear probe", "## Machine",
                    "## Missing records"):
        assert heading in results
    assert f"{metrics['knn_k20_top1']:.2f} (n=1)" in results  # real numbers, from the record
    assert re.search(r"CLIM beats MoCo v2 at equal epochs \(linear\) .*\*\*inconclusive\*\*", results)
    assert "`mocov2-time` seed(s) 0" in results  # a missing record is named
    assert (tmp_path / "ablation_plots" / "knn_over_epochs.png").stat().st_size > 0

    written = (records / "clim" / "seed0.json").stat().st_mtime_ns
    assert main(["ablate", "--scale", "smoke", "--records", str(records), "--out", str(out), "--seeds", "1",
                 "--only", "mocov2,clim"]) == 0
    assert "2 runs, 2 recorded in" in capsys.readouterr().out
    assert (records / "clim" / "seed0.json").stat().st_mtime_ns == written  # nothing retrained
    changed = plan_runs("smoke", out, records, 1, only="clim", overrides=["train.lr=0.01"])[0]
    assert read_record(changed.record_path, changed.spec) is None  # another spec is not taken as finished


def test_results_name_no_machine_path(tmp_path):
    """RESULTS.md is committed: an absolute --records / --results shows as its last name only."""
    import argparse

    from clim.study.cli import command_line
    from clim.study.results import write_results

    records = tmp_path / "ablate-cpu"
    text = write_results("smoke", records, path=tmp_path / "RESULTS.md").read_text()
    assert str(tmp_path) not in text and "`ablate-cpu`" in text and "No records yet." in text
    args = argparse.Namespace(scale="cpu", records=str(records), out=None, seeds=None, overrides=["train.epochs=2"],
                              results=str(tmp_path / "docs" / "RESULTS.md"))
    line = command_line(args)
    assert str(tmp_path) not in line
    assert line == ("clim ablate --scale cpu --records ablate-cpu --out runs/ablate-cpu --set train.epochs=2 "
                    "--results RESULTS.md")
    args.records, args.results = None, None
    assert "--records results/ablate-cpu " in command_line(args)


def test_a_record_stays_valid_for_new_keys_but_not_for_an_edited_preset(tmp_path):
    from clim.study.matrix import same_spec

    run = plan_runs("cpu", tmp_path, tmp_path, 1, only="clim")[0]
    assert run.spec["config"]["train.epochs"] == 20 and same_spec(run.spec, run.spec)
    older = {**run.spec, "config": {k: v for k, v in run.spec["config"].items() if k != "train.compile"}}
    assert same_spec(older, run.spec)  # a key added to the code after the record was written
    edited = {**run.spec, "config": {**run.spec["config"], "train.epochs": 10}}
    assert not same_spec(edited, run.spec)  # the preset trained something else then
    assert not same_spec({**run.spec, "seed": 1}, run.spec)


def test_the_readme_headline_is_what_the_committed_records_say(tmp_path):
    """README's CLIM-vs-MoCo v2 block is generated from results/ablate-cpu; regenerate it when records change
    (`clim ablate --scale cpu --report --readme README.md`)."""
    from pathlib import Path

    from clim.study.results import README_BEGIN, README_END, headline_text, write_readme_headline

    root = Path(__file__).resolve().parents[1]
    text = headline_text("cpu", root / "results" / "ablate-cpu")
    readme = (root / "README.md").read_text()
    assert text in readme, "README headline is stale: run clim ablate --scale cpu --report --readme README.md"
    copy = tmp_path / "README.md"
    copy.write_text(f"intro\n{README_BEGIN}\nold\n{README_END}\nrest\n")
    assert write_readme_headline(copy, text) and copy.read_text() == f"intro\n{text}\nrest\n"
    assert not write_readme_headline(copy, text)  # already fresh


def test_cpu_minutes_per_run_leave_out_resumed_runs():
    """A resumed record from before cpu_complete counted only its last process: it would understate the cost."""
    from clim.study.tables import Records as _Records

    records = _Records([])
    records.found = {"clim": {0: {"cpu_minutes": 8.0}, 1: {"cpu_minutes": 9.0},
                              2: {"cpu_minutes": 0.8, "resumed": True}}}
    stat = records.cost("clim")
    assert (stat.mean, stat.n) == (8.5, 2)
    assert records.cost("mocov2") is None


def test_a_resumed_run_adds_the_cpu_minutes_of_its_stopped_processes(tmp_path):
    """A process ended by a stop request leaves its CPU minutes for the rerun; one killed outright
    leaves its 'running' mark, and the run's CPU minutes are then flagged incomplete."""
    from clim.study.runner import _cpu_before, _cpu_write

    assert _cpu_before(tmp_path, resumed=False) == (0.0, True)  # a fresh run
    _cpu_write(tmp_path, 3.5, True)  # stopped by SIGTERM after 3.5 CPU minutes
    assert _cpu_before(tmp_path, resumed=True) == (3.5, True)  # the rerun starts from there
    # ... and is killed outright (no _cpu_write): the next process knows a share is missing
    assert _cpu_before(tmp_path, resumed=True) == (3.5, False)
    assert _cpu_before(tmp_path, resumed=False) == (0.0, True)  # no checkpoint: the run starts over


def test_cpu_minutes_count_resumed_runs_when_every_process_is_counted():
    from clim.study.tables import Records as _Records

    records = _Records([])
    records.found = {"clim": {0: {"cpu_minutes": 8.0, "resumed": True, "cpu_complete": True},
                              1: {"cpu_minutes": 2.0, "resumed": True, "cpu_complete": False}}}
    stat = records.cost("clim")
    assert (stat.mean, stat.n) == (8.0, 1)


def test_holm_adjusts_the_p_values_present_step_down():
    from clim.study.claims import holm

    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> kept monotone at 0.06
    adjusted = holm([0.01, 0.04, 0.03, None, 0.005])
    assert adjusted[3] is None
    assert adjusted[:3] + adjusted[4:] == [pytest.approx(0.03), pytest.approx(0.06), pytest.approx(0.06),
                                           pytest.approx(0.02)]
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
    assert holm([]) == []


def test_similarity_gap_is_intra_class_minus_all_pairs_per_seed():
    from clim.study.tables import Records as _Records

    records = _Records([])
    records.found = {"clim": {0: {"metrics": {"intra_class_similarity": 0.7, "all_pairs_similarity": 0.5}},
                              1: {"metrics": {"intra_class_similarity": 0.6}}}}  # no all-pairs value: left out
    assert records.similarity_gap("clim") == {0: pytest.approx(0.2)}
    assert records.similarity_gap("mocov2") == {}


def _split_values(seed: int) -> dict[str, float]:
    """Known split: mixing = 2 + 0.1 s, selection = -0.5 + 0.1 s; seeds 3+ (MoCo v2 and CLIM only) put CLIM
    5 points ahead, which the split must not see."""
    base = 80.0 + 0.3 * seed
    if seed >= 3:
        return {"mocov2": base, "clim": base + 5.0}
    return {"mocov2": base, "random-cutmix": base + 2.0 + 0.1 * seed, "clim": base + 1.5 + 0.2 * seed}


def _metrics(knn: float, **extra) -> dict:
    return {"knn_k20_top1": knn, "linear_top1": knn + 1.0, "semisup_top1": 50.0, "intra_class_similarity": 0.7,
            "all_pairs_similarity": 0.5, "positive_precision": 0.5, "random_init_knn_k20_top1": 70.0 + knn / 100,
            "linear_lr": 1.0, "linear_final_train_loss": 0.3, "linear_loss_above_chance": False, **extra}


def test_the_gain_splits_into_mixing_and_selection_on_the_seeds_the_three_arms_share():
    from clim.study.claims import holm
    from clim.study.regimes import MIXING, SELECTION, TOTAL, compare, split_section, split_sentence
    from clim.study.tables import Records

    records = Records([])
    for seed in range(8):
        for arm, value in _split_values(seed).items():
            records.found.setdefault(arm, {})[seed] = {"metrics": _metrics(value)}
    mixing, seeds = compare(records, MIXING, "knn_k20_top1", True)
    selection, _ = compare(records, SELECTION, "knn_k20_top1", True)
    total, _ = compare(records, TOTAL, "knn_k20_top1", True)
    assert seeds == {0, 1, 2} and (mixing.n, selection.n, total.n) == (3, 3, 3)
    assert mixing.mean == pytest.approx(2.1) and selection.mean == pytest.approx(-0.4)
    assert total.mean == pytest.approx(mixing.mean + selection.mean)  # the parts add up on the shared seeds
    assert records.paired("clim", "mocov2", "knn_k20_top1").n == 8  # the headline claim keeps every seed
    assert (mixing.verdict, selection.verdict) == (AGREES, DISAGREES)  # -0.4 ± 4.30 × 0.1 / √3
    sentence = split_sentence(records, "knn_k20_top1")
    assert sentence.startswith("kNN top-1 % (k=20) on seeds 0, 1, 2 (n = 3): MoCo v2 80.30, random + CutMix 82.40, "
                               "CLIM 82.00; CLIM − MoCo v2 +1.70 [")
    assert "= mixing +2.10 [+1.85, +2.35] (**agrees**) + selection -0.40 [" in sentence
    rows = {tuple(cell.strip() for cell in line.split("|")[1:3]): line for line in split_section(records)
            if line.startswith("| ")}
    linear_mixing = compare(records, MIXING, "linear_top1", True)[0]
    linear_selection = compare(records, SELECTION, "linear_top1", True)[0]
    adjusted = holm([mixing.p, linear_mixing.p, selection.p, linear_selection.p])
    assert f"| {adjusted[0]:.3f} |" in rows[MIXING.label, "kNN top-1 % (k=20)"]  # Holm over the four parts
    assert f"| {adjusted[3]:.3f} |" in rows[SELECTION.label, "linear top-1 %"]
    assert "not in the family" in rows[TOTAL.label, "kNN top-1 % (k=20)"]
    empty = Records([])
    assert split_sentence(empty, "knn_k20_top1") is None and "none yet" in split_section(empty)[0]


def _write_record(path, spec: dict, variant: str, seed: int, metrics: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "version": 1, "spec": spec, "variant": variant, "seed": seed, "metrics": metrics, "cpu_minutes": 1.0,
        "curve": [{"epoch": 1, "knn_top1": metrics["knn_k20_top1"]}], "machine": {"cpu": "synthetic"},
        "created": "2026-12-01T00:00:00+00:00", "load_average": [1.0, 1.0, 1.0], "commit": "abc1234"}))


@pytest.fixture
def pixels(monkeypatch):
    """Raw-pixel references with known values: kNN 50 + size, ridge 40 + size; native sizes digits 8, glyphs 24."""
    calls = []

    def compute(dataset, root, size):
        calls.append((dataset, size))
        return {"pixel_knn_top1": 50.0 + size, "pixel_linear_top1": 40.0 + size, "pixel_linear_alpha": 1.0,
                "image_size": size, "num_test": 100, "num_train": 400, "num_classes": 10}

    monkeypatch.setattr("clim.study.regimes.compute_pixel_references", compute)
    monkeypatch.setattr("clim.study.regimes.native_size", lambda dataset, root: {"digits": 8, "glyphs": 24}[dataset])
    return calls


def _two_regimes(tmp_path) -> tuple:
    """Smoke-scale records (MoCo v2 and CLIM seeds 0-7, random + CutMix 0-2: the known split) and a many-class
    regime folder that no scale plans (5 arms, seeds 0-1, records carrying raw pixels at 16 px)."""
    records, glyphs = tmp_path / "ablate-smoke", tmp_path / "manyglyphs"
    for run in plan_runs("smoke", records, records, only="mocov2,clim,random-cutmix"):
        value = _split_values(run.seed).get(run.variant.name)
        if value is not None:
            _write_record(run.record_path, run.spec, run.variant.name, run.seed, _metrics(value))
    config = {"data.name": "glyphs", "data.root": "/nowhere/glyphs", "data.image_size": 16}
    for seed in range(2):
        for rank, arm in enumerate(("mocov2", "clim", "random-cutmix", "center_wise-none", "knn-cutmix")):
            metrics = _metrics(30.0 + rank + seed, num_classes=200, pixel_knn_k20_top1=33.5, pixel_linear_top1=20.0,
                               pixel_image_size=16, num_test=400)
            _write_record(glyphs / arm / f"seed{seed}.json", {"config": config}, arm, seed, metrics)
    return records, glyphs


def test_results_report_two_regimes_with_raw_pixels_at_their_training_resolution(tmp_path, pixels):
    from clim.evaluation.cli import versus
    from clim.study.results import write_results

    records, glyphs = _two_regimes(tmp_path)
    text = write_results("smoke", records, tmp_path / "RESULTS.md",
                         regimes=[f"manyglyphs={glyphs}", f"waiting={tmp_path / 'waiting'}"]).read_text()
    assert pixels == [("digits", 8), ("glyphs", 24)]  # digits: trained at its native 8 px; glyphs' native 24 px
    assert "| `smoke` | 19 record(s) of 83 planned runs in `ablate-smoke` | `digits` | 10 |" in text and "| `manyglyphs` | 10 record(s) in `manyglyphs` | `glyphs` | 200 |" in text
    assert "| `waiting` | no record yet in `waiting`: the regime is running or not started |" in text
    assert "### Is it the selection?" in text and "= mixing +2.10 [+1.85, +2.35] (**agrees**)" in text
    assert "| raw pixels | 8 px (training resolution) | 58.00 | 48.00 (ridge) |" in text
    clim = sum(_split_values(seed)["clim"] for seed in range(8)) / 8
    assert f"- `clim`: kNN {clim:.2f} (n=8) is {versus(clim, 58.0, 'raw pixels at 8 px')};" in text
    # the many-class regime: from its records at 16 px, computed at its native 24 px
    section = text[text.index("## Regime `manyglyphs`"):]
    assert section.startswith("## Regime `manyglyphs`: `glyphs`, 200 classes, trained at 16 px")
    assert "about 1/200 = 0.5 % of the time" in section
    assert "| raw pixels | 16 px (training resolution) | 33.50 | 20.00 (ridge) | the records (10; all equal) |" in section
    assert "| raw pixels | 24 px (native resolution) | 74.00 | 64.00 (ridge) | computed, cached in" in section
    assert "- `clim`: kNN 31.50 (n=2) is below raw pixels at 16 px by 2.00 points, below raw pixels at 24 px" in section
    assert "*p (Holm)* adjusts all 10 tests of this table" in section
    assert "## Regime `waiting`" in text and "No record yet in `waiting`: the regime is running" in text
    assert json.loads((glyphs / "pixel_references.json").read_text())["native_image_size"] == 24
    # shared seeds: Table 6 shows CLIM on random + CutMix's seeds 0-2, the claims table likewise
    assert re.search(r"\| center_wise \| not run \| — \| 83\.00 ± [0-9.]+ \(n=3\) \|", text)
    assert re.search(r"center-wise \+ CutMix beats random \+ CutMix .* 83\.00 ± [0-9.]+ \(n=3\) vs 83\.40", text)
    write_results("smoke", records, tmp_path / "again.md", regimes=[f"manyglyphs={glyphs}"])
    assert len(pixels) == 2  # the second report reads pixel_references.json


def test_readme_block_names_the_split_the_pixels_holm_and_the_other_regimes(tmp_path, pixels):
    from clim.study.results import headline_text

    records, glyphs = _two_regimes(tmp_path)
    text = headline_text("smoke", records, regimes=[f"manyglyphs={glyphs}", f"waiting={tmp_path / 'waiting'}"])
    assert "- Is it the selection? " in text and "mixing +2.10 [+1.85, +2.35] (**agrees**)" in text
    assert "raw pixels at the training resolution, 8 px, kNN 58.00 % / ridge 48.00 %" in text
    assert "- Holm's correction over the 19 claims of RESULTS.md (family-wise error 5 %): " in text
    assert ("- Regime `manyglyphs` (`glyphs`, 200 classes, trained at 16 px): 10 record(s) in `manyglyphs`; kNN top-1 "
            "% (k=20) on seeds 0, 1 (n = 2): MoCo v2 30.50, random + CutMix 32.50, CLIM 31.50;") in text
    assert "raw pixels at 16 px: kNN 33.50 %, ridge 20.00 %; CLIM's kNN is below raw pixels at 16 px by 2.00" in text
    assert "- Regime `waiting`: no record yet in `waiting`: the regime is running or not started." in text


def test_cutmix_effect_per_selection_and_over_the_five():
    from clim.study.matrix import FULL_CLIM, SELECTIONS, selection_variant
    from clim.study.tables import Records as _Records
    from clim.study.tables import _mixing_effect

    records = _Records([])
    records.found = {}
    for rank, selection in enumerate(SELECTIONS):
        for mixing, gain in (("none", 0.0), ("cutmix", 1.0 + rank)):  # CutMix adds 1 + rank points
            name = selection_variant(selection, mixing)
            seeds = range(3) if name != FULL_CLIM else range(4)  # seed 3 lacks the other nine cells
            records.found[name] = {s: {"metrics": {"linear_top1": 80.0 + gain + 0.1 * s * (mixing == "cutmix") * rank}}
                                   for s in seeds}
    rows = {line.split(" | ")[0].strip("| "): line for line in _mixing_effect(records) if line.startswith("| ")}
    assert "| +1.00 [+1.00, +1.00] | 0.0e+00 | 3/3 | 3 | **agrees** |" in rows["random"]
    assert rows["center_wise"].endswith("| 3/3 | 3 | **agrees** |")  # seed 3 has no partner
    # mean of the five: 1 + mean(rank) = 3 points, plus 0.1 * seed * mean(rank) = 0.2 * seed
    assert rows["mean of the five"].startswith("| mean of the five | +3.20 [")


def test_glyphs_regime_runs_its_five_arms_seed_major_with_pixel_references(tmp_path):
    from clim.study.matrix import GLYPHS_ARMS

    runs = plan_runs("glyphs", tmp_path / "out", tmp_path / "records")
    assert GLYPHS_ARMS == ("mocov2", "clim", "random-cutmix", "center_wise-none", "knn-cutmix")
    assert len(runs) == 8 * len(GLYPHS_ARMS) and {run.variant.group for run in runs} == {"headline"}
    assert [run.label for run in runs[:6]] == [f"{arm} seed0" for arm in GLYPHS_ARMS] + ["mocov2 seed1"]
    assert [run.seed for run in runs] == sorted(run.seed for run in runs)  # seed k of every arm before seed k+1
    configs = {run.variant.name: load_config(run.spec["preset"], overrides=run.spec["overrides"]) for run in runs[:5]}
    assert {config.data.name for config in configs.values()} == {"glyphs"}
    assert configs["mocov2"].method.name == "mocov2"
    assert [(configs[arm].method.selection, configs[arm].method.mixing) for arm in GLYPHS_ARMS[1:]] == [
        ("center_wise", "cutmix"), ("random", "cutmix"), ("center_wise", "none"), ("knn", "cutmix")]
    assert runs[0].spec["evaluation"]["pixel_references"] is True
    assert "pixel_references" not in plan_runs("cpu", tmp_path, tmp_path, seeds=1)[0].spec["evaluation"]


def test_a_scale_with_pixel_references_records_them_and_the_class_count(tmp_path, monkeypatch):
    import dataclasses

    from clim.evaluation.references import pixel_references
    from clim.study.matrix import GLYPHS_ARMS

    focused = dataclasses.replace(SCALES["smoke"], arms=GLYPHS_ARMS, pixel_references=True)
    monkeypatch.setitem(SCALES, "smoke-focused", focused)
    records = tmp_path / "records"
    summary = run_matrix("smoke-focused", tmp_path / "out", records, seeds=1, only="mocov2")
    assert (summary["runs"], summary["failed"]) == (1, [])
    metrics = json.loads((records / "mocov2" / "seed0.json").read_text())["metrics"]
    expected = pixel_references("digits", None, 8)
    assert metrics["num_classes"] == 10 and metrics["pixel_image_size"] == 8
    assert metrics["pixel_knn_k20_top1"] == pytest.approx(expected["pixel_knn_top1"])
    assert metrics["pixel_linear_top1"] == pytest.approx(expected["pixel_linear_top1"])
    assert metrics["dataset_manifest_sha256"] is None  # digits is not a built dataset


def test_refresh_precision_table_has_one_column_per_refresh_and_skips_arms_without_positives():
    from types import SimpleNamespace

    from clim.study.tables import refresh_precision

    def record(*precisions):
        curve = [{"epoch": 1, "loss": 5.0}] + [{"epoch": 2 * i + 3, "positive_precision": p}
                                               for i, p in enumerate(precisions)]
        return {"curve": curve}

    records = SimpleNamespace(found={"mocov2": {0: {"curve": [{"epoch": 1}]}},
                                     "clim": {0: record(0.1, 0.3), 1: record(0.2, 0.5), 2: record(0.9, 0.9)}})
    lines = refresh_precision(records, ["mocov2", "clim"], seeds={0, 1})
    assert "| arm | epoch 3 | epoch 5 |" in lines
    assert "| `clim` | 0.150 ± 0.071 (n=2) | 0.400 ± 0.141 (n=2) |" in lines
    assert not any("mocov2" in line for line in lines)
    assert refresh_precision(records, ["mocov2"]) == []
