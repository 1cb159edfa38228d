"""``clim ablate``: the paper's ablations as a resumable study, its records kept as data, RESULTS.md from them.

Every variant of paper Tables 6-10 and 12 is a list of ``--set`` overrides of one base preset per scale
(``ablate-smoke`` / ``ablate-cpu`` / ``ablate-gpu``) that *is* the full CLIM run (center-wise positives +
CutMix, α = 2, one resolution), so each comparison differs in exactly the keys a variant names. Variants
come in priority groups, each with its own seed count (the headline first), so a study stopped early is
already useful. Each run trains and evaluates in its own subprocess and writes one JSON record; a rerun
skips every recorded run and resumes a half-trained one from its checkpoint.

RESULTS.md is generated from the records alone: every metric as mean ± sample std over seeds beside the
paper's numbers (METHOD §6), every claim judged on per-seed (paired) differences. The module map is in
docs/ARCHITECTURE.md.
"""
