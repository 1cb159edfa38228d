"""CLIM's method on top of MoCo v2 (METHOD §2-4): positive selection, mixing, losses, the step objective.

``knn`` (exact kNN and spherical k-means), ``selection`` (the strategies and the center-wise rule),
``bank`` (``PositiveBank``, the positives table as a module), ``positives`` (the trainer's bank, from
the config), ``mixing`` (CutMix, Mixup), ``losses`` (InfoNCE, mixed InfoNCE) and ``objective`` (the
loss of one training step). The training loop calls into this package; nothing here imports the
engine or evaluation.
"""
