"""``clim ablate``: the paper's ablations as a resumable study, its records kept as data, RESULTS.md from them.

How the study runs is docs/ABLATIONS.md; the module map is in docs/ARCHITECTURE.md.
"""
