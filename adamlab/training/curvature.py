"""Curvature of every member's loss during training, on a fixed batch (`diagnostics` section).

Every `diagnostics.curvature_every_steps` steps the loop hands the members (host copies) to
`CurvatureProbe.evaluate`: per member the top Hessian eigenvalues ("sharpness",
"eigenvalue_<i>"), the Adam family's "preconditioned_sharpness" (top eigenvalue of P^-1 H) and,
with `density_probes > 0`, the spectral density. docs/diagnostics.md defines them.

The fixed batch is the first `curvature_examples` training examples in stored order, so every
evaluation of a run, resumed or not, sees the same examples. The loss is the run's
`train.loss` with the model in evaluation mode (dropout off, BatchNorm's running statistics).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from adamlab import data
from adamlab.diagnostics import hessian, layer_stats
from adamlab.training import steps
from adamlab.training.experiment import optimizer_spec


def fixed_batch(config: ml_collections.ConfigDict, num_train: int) -> dict[str, np.ndarray]:
    """The first `diagnostics.curvature_examples` training examples, in stored order: one
    host batch for the probe (a plain jit), so any count works on any number of devices."""
    size = min(int(config.diagnostics.get("curvature_examples", 1024)), num_train)
    batch = next(
        data.eval_batches(config.data, split="train", global_batch_size=size, num_local_devices=1)
    )
    return {"image": batch["image"], "label": batch["label"]}


def preconditioner(spec: layer_stats.AdamSpec, opt_state: Any, params: Any) -> jax.Array | None:
    """Flat diag of P = sqrt(v_hat) + eps, in the parameters' flat order; None if the state has
    no second moment for every parameter (a baseline, frozen leaves)."""
    fields = ("count", "mu", "nu", "nu_max") if spec.name == "amsgrad" else ("count", "mu", "nu")
    state = layer_stats.find_state(opt_state, fields) if spec.adam_family else None
    if state is None:
        return None
    b2 = layer_stats.hyperparameter(opt_state, "b2", spec.b2)
    eps = layer_stats.hyperparameter(opt_state, "eps", spec.eps)
    v_hat = layer_stats.second_moment_hat(spec, state, b2)
    if len(v_hat) != len(jax.tree.leaves(params)):
        return None
    return jnp.concatenate([jnp.sqrt(v.astype(jnp.float32)).ravel() for v in v_hat.values()]) + eps


class CurvatureProbe:
    """Compiled once per run: Lanczos on the Hessian (and P^-1 H) of the fixed batch's loss."""

    def __init__(self, config: ml_collections.ConfigDict, model: Any, num_train: int):
        diag = config.diagnostics
        self.top_k = int(diag.get("top_k", 1))
        self.num_steps = int(diag.get("lanczos_steps", 20))
        self.preconditioned = bool(diag.get("preconditioned", True))
        self.density_probes = int(diag.get("density_probes", 0))
        self.density_steps = int(diag.get("density_steps", 30))
        self.seed = int(config.seed)
        self.spec = optimizer_spec(config)
        self.batch = fixed_batch(config, num_train)
        loss_name = config.train.get("loss", "cross_entropy")

        def probe(state, batch, key):
            def loss(params):
                variables = steps.model_variables(params, state.batch_stats)
                logits = model.apply(variables, batch["image"], train=False)
                return steps.example_losses(logits, batch["label"], loss_name).mean()

            hvp, n = hessian.make_hvp(loss, state.params)
            keys = jax.random.split(key, 3)
            top = hessian.lanczos(hvp, n, keys[0], self.num_steps).eigenvalues
            out = {f"eigenvalue_{i + 1}": top[i] for i in range(min(self.top_k, top.shape[0]))}
            out["sharpness"] = top[0]
            diagonal = preconditioner(self.spec, state.opt_state, state.params)
            if self.preconditioned and diagonal is not None:
                operator = hessian.preconditioned_hvp(hvp, diagonal)
                out["preconditioned_sharpness"] = hessian.lanczos(
                    operator, n, keys[1], self.num_steps
                ).eigenvalues[0]
            if self.density_probes:
                slq = hessian.spectral_density(
                    hvp, n, keys[2], num_probes=self.density_probes, num_steps=self.density_steps
                )
                out["density"] = {"nodes": slq.eigenvalues, "weights": slq.weights}
            return out

        self._probe = jax.jit(probe)

    def evaluate(self, host_members: Any, names, step: int) -> list[dict[str, Any]]:
        """Per member (row order of `names`): the curvature at `step` (host numbers)."""
        key = jax.random.fold_in(jax.random.key(self.seed), step)
        out = []
        for m, index, _ in names:
            pick = lambda x, index=index: np.asarray(x)[index]
            state = jax.tree.map(pick, host_members.states[m])
            values = jax.device_get(self._probe(state, self.batch, key))
            density = values.pop("density", None)
            row = {k: float(v) for k, v in values.items()}
            if density is not None:
                row["density"] = {k: np.asarray(v).tolist() for k, v in density.items()}
            out.append(row)
        return out
