"""Evaluators of a trained model and sampler, one per module; :mod:`inferkit.evaluation` runs them all.

- :mod:`~inferkit.eval.reference`: a common long-run inference for comparing generators
- :mod:`~inferkit.eval.inpainting`: mask patterns and inpainting by the masked likelihood
- :mod:`~inferkit.eval.ais`: annealed importance sampling estimate of ``log p(x)``
- :mod:`~inferkit.eval.iwae`: the importance-weighted bound for amortized samplers
- :mod:`~inferkit.eval.frechet`: Fréchet distance of Gaussian feature statistics
- :mod:`~inferkit.eval.inception`: the FID Inception-v3 network (weights from a local file)
- :mod:`~inferkit.eval.classifier`: a small classifier trained on the data, for features and factors
- :mod:`~inferkit.eval.hierarchy`: vary one latent layer, and which layer changes which factor
- :mod:`~inferkit.eval.figures`: PNG figures
"""
