"""Looking inside the optimizer: per-layer statistics, curvature and their figures.

- `layer_stats`: per parameter leaf norms and the Adam family's per-coordinate step sizes,
  computed inside the jitted train step from the optimizer state (`adamlab.training.steps`).
- `hessian`: Hessian-vector products, Lanczos, spectral density and the preconditioned
  sharpness (Cohen et al. 2021, 2022), on flat parameter vectors.
- `figures`: the PNGs of `adamlab diagnostics --workdir DIR`, drawn from `metrics.jsonl`.

Only `adamlab.optim` is imported from adamlab; training builds on this package.
"""
