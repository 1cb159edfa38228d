"""What every layer may use at run time: process groups, checkpoint files, embedding a dataset, machine info.

Nothing here knows the method, the model or the training loop; the modules import torch lazily
where ``clim --help`` reaches them (``checkpoint``).
"""
