"""Training: a dataset directory in, a model artifact (contract 2) out.

Reads a dataset (:mod:`recsys.data`) and a :class:`~recsys.config.TrainConfig`, optionally a parent artifact
to warm-start from; writes checkpoints to ``<out>.ckpt/`` after every epoch and the artifact at the end.

- ``jobs``: :func:`train_artifact`, the entry point: load the data, train here or on Ray Train, write.
- ``loop``: the one training loop (sample, objective, Adam step, validate, stop), :func:`fit`.
- ``run``: what a run is built from (:func:`prepare_run`), what it carries between epochs, its checkpoints.
- ``objectives``: one training objective per model family; ``losses``: BPR, InfoNCE and L2 as pure
  functions; ``metanode``: the state of full-population contrastive negatives.
- ``warmstart``: starting from a trained artifact on a new version of the data.
- ``distributed``: the same loop as data-parallel replicas on Ray Train.

This ``__init__`` imports nothing, so that importing one module does not load the others.
"""
