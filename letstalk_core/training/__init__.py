"""Training: datasets, preprocessing, the synthetic talking-face world, trainer, evaluation.

Submodules are imported on use (``from letstalk_core.training.synthetic import ...``) so that
importing this package stays cheap.
"""
