"""``clim ablate``: the paper's ablation matrix at equal epochs, evaluated, summarised in RESULTS.md.

Every variant of paper Tables 6, 7, 9, 10 and 12 is a list of ``--set`` overrides of one base preset
per scale (``ablate-smoke`` / ``ablate-cpu`` / ``ablate-gpu``). The base preset *is* the full CLIM
run (center-wise positives + CutMix, α = 2, one resolution), so each comparison differs in exactly
the keys a variant names. MoCo v2 and full CLIM (the headline comparison) get ``--seeds-main``
seeds, every other variant ``--seeds-other``.

Each run trains and evaluates in its own subprocess (``python -m clim.study.runner RUN_DIR``, which
reads ``RUN_DIR/ablate.json``): memory is returned between runs, a crash costs one run instead of the
matrix, and an interrupted matrix resumes when the same command is repeated — a run whose
``eval.json`` was written for the same spec is skipped, a half-trained one resumes from its
checkpoint (the trainer does that by itself). Runs go seed-major, so an interrupted matrix already
holds one seed of every variant.

RESULTS.md puts each metric as mean ± sample std over seeds beside the paper's numbers (METHOD §6:
ImageNet, ResNet-50, 200 epochs, linear top-1), and states for each of the paper's claims whether
our difference points the same way and exceeds the seed spread; nothing in it is written by hand.

Modules: ``matrix`` (scales, variants, the planned runs), ``runner`` (one run in its subprocess, the
matrix loop), ``claims`` (mean ± std, the paper's numbers and claims, verdicts), ``results``
(RESULTS.md), ``plots`` (its figures), ``cli`` (``clim ablate``).
"""
