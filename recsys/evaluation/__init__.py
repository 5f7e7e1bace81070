"""Evaluation: an artifact's embeddings ranked against a held-out split, beside training-free baselines.

Reads an artifact (or any user/item embeddings) and its dataset directory; writes a report as JSON, a
plain-text table or a self-contained HTML page. Training also uses ``ranking`` and ``metrics`` to validate.

- ``evaluate``: :func:`evaluate_split`, one split under a named protocol, model and baselines into a report.
- ``ranking``: full ranking, chunk by chunk, into metrics; ``metrics``: Recall, NDCG, Precision, Hit, MRR,
  coverage and popularity @K; ``segments``: metrics by item popularity and user activity, popularity bias;
  ``geometry``: alignment and uniformity of an embedding space.
- ``baselines``: the registry of reference rows, and popular and random; ``filters``: the training-free
  graph filters (GF-CF, ChebyCF, BSPM on one spectral basis of the item graph, each tuned on the selection
  split, and ``graph-filter``, the best of them).
- ``report``: the report's rows, JSON and table; ``report_html`` and ``plots``: the HTML page and its charts.

This ``__init__`` imports nothing, so that importing one module does not load the others.
"""
