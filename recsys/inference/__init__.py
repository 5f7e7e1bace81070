"""Inference: top-K recommendations from a trained artifact, for ``recsys recommend``, serving and evaluation.

Reads an artifact directory (contract 2) only, never a dataset; writes nothing.

- ``recommend``: :class:`Recommender`, top-K for known users, fold-in for new ones, similar items.
- ``topk``: score → mask seen pairs → top-K, chunked over users (the one implementation evaluation shares).
- ``scoring``: scorers that write dot products into a reused buffer.
- ``retrieval``: inner-product search over item embeddings, exact or approximate with faiss.

This ``__init__`` imports nothing, so that importing one module does not load the others.
"""
