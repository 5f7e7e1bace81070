"""Models: parameters and ``forward`` only, no losses and no I/O.

Reads a resolved :class:`~recsys.config.TrainConfig` and the graph's size; gives embeddings (and, for the
contrastive models, their perturbed views) to the training objectives and to scoring.

- ``registry``: :data:`MODELS`, every model's name, class, objective and λ/ε/τ defaults; torch-free, so the
  CLI reads it at start-up.
- ``build``: :func:`build_model`, a model from a resolved config.
- ``base``: what every model shares (embedding tables, the ``Embeddings``/``Views`` outputs, SimGCL noise);
  ``mf``: matrix factorisation; ``lightgcn``: LightGCN, SimGCL and XSimGCL.

This ``__init__`` imports nothing, so that importing the registry does not load torch.
"""
