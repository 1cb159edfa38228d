"""CLIM's method on top of MoCo v2 (METHOD §2-4): positive selection (``knn``, ``selection``; ``bank``, the table as
a module; ``positives``, the trainer's bank), ``mixing``, ``losses`` and ``objective`` (one step's loss). The
training loop calls into this package; nothing here imports the engine or evaluation."""
