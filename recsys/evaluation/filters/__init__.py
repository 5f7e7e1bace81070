r"""Training-free graph filters: the reference rows a trained model is compared with.

Three published filters over the item-item graph of the training interactions, each implemented from its
paper's equations, and the machinery they share:

- ``spectral``: the item graph (:math:`\tilde R = D_U^{-1/2} R D_I^{-1/2}`, :math:`\tilde P = \tilde R^\top
  \tilde R`), its top eigenpairs by randomized SVD, and any function of :math:`\tilde P` applied through them
  (exact on the top of the spectrum, a chord on the rest).
- ``terms``: the one form every filter's scores take (sparse, identity and low-rank terms, a popularity
  tilt), its exact scorer for full ranking, and its evaluation on a few candidate items per user.
- ``gfcf``: GF-CF (Shen et al., CIKM 2021), a linear filter plus an ideal low-pass.
- ``chebycf``: ChebyCF (Kim et al., SIGIR 2025), a Chebyshev interpolation of a smooth low-pass, an ideal
  pass-band boost, degree normalisation.
- ``bspm``: BSPM (Choi et al., SIGIR 2023), blurring then sharpening as discretised ODEs, with an ideal
  low-pass merged before sharpening.
- ``tuning``: the configuration, the honest search of every filter's grid on the selection split, and the
  fitted rows that :func:`recsys.evaluation.evaluate.evaluate_split` ranks (``gf-cf``, ``chebycf``, ``bspm``,
  and ``graph-filter``, the best of them on the selection split).

This ``__init__`` imports nothing.
"""
