"""Data: a dataset directory (contract 1, written by ``pipelines/``) read into the training graph.

Reads ``train/valid/test.parquet`` and ``meta.json``; writes nothing. Gives index tensors, the normalised
user-item bipartite graph and negative samples to training, and the splits to evaluation.

- ``protocol``: which splits each protocol trains, selects and tests on, and which it masks (torch-free).
- ``dataset``: :func:`load_dataset`, the only place ``recsys/`` reads a dataset directory.
- ``graph``: the bipartite graph, its symmetric normalisation and the propagation kernel.
- ``sampling``: uniform negative sampling for a whole epoch at once.

This ``__init__`` imports nothing, so that the torch-free modules stay light to import.
"""
