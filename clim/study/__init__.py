"""``clim ablate``: the paper's ablations as a resumable study, its records kept as data, RESULTS.md from them.

Every variant of paper Tables 6-10 and 12 is a list of ``--set`` overrides of one base preset per
scale (``ablate-smoke`` / ``ablate-cpu`` / ``ablate-gpu``). The base preset *is* the full CLIM run
(center-wise positives + CutMix, α = 2, one resolution), so each comparison differs in exactly the
keys a variant names. Variants come in priority groups, each with its own seed count: the headline
(MoCo v2, CLIM, MoCo v2 given at least CLIM's CPU minutes) first, then Table 6, Tables 9 / 10,
Table 7 and Table 8, so a study stopped early is already useful.

Each run trains and evaluates in its own subprocess (``python -m clim.study.runner RUN_DIR``, which
reads ``RUN_DIR/ablate.json``) and writes one JSON record (``RECORDS/<variant>/seed<k>.json``: spec
with the resolved config, metrics, per-epoch curve, CPU minutes, machine, commit). A rerun skips
every recorded run and resumes a half-trained one from its checkpoint, so stopping loses at most the
runs in flight.

RESULTS.md is generated from the records alone: every metric as mean ± sample std over seeds beside
the paper's numbers (METHOD §6: ImageNet, ResNet-50, 200 epochs, linear top-1), and every claim
judged on per-seed (paired) differences: mean, 95 % t interval, p, sign count, n and a verdict.

Modules: ``matrix`` (scales, variants, the planned runs, records), ``runner`` (one run in its
subprocess, the matrix loop), ``claims`` (statistics, the paper's numbers and claims), ``tables`` (the
records by variant and seed, the full matrix's tables), ``regimes`` (a regime's records, raw-pixel
references, the split of CLIM's gain), ``results`` (RESULTS.md, the README headline), ``plots`` (its
figures), ``cli`` (``clim ablate``).
"""
