"""HTTP serving of a model artifact with Ray Serve (see :mod:`serving.app` and :mod:`serving.runner`)."""
