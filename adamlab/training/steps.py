"""Pure train and eval steps: `(state, batch) -> (state, metrics)` and `(state, batch) -> sums`.

Plain (un-jitted) functions that the engines jit/pmap once; with `axis_name` (under pmap)
gradients, metrics and BatchNorm statistics are averaged so the result equals the one-device
step. docs/internals.md lists the train metrics and the losses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from adamlab.training import zero
from adamlab.training.train_state import TrainState

Batch = dict[str, jax.Array]
LOSSES: tuple[str, ...] = ("cross_entropy", "mse")
TrainStep = Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]
EvalStep = Callable[[TrainState, Batch], dict[str, jax.Array]]


def _with_axis_name(model: nn.Module, axis_name: str | None) -> nn.Module:
    """Gives BatchNorm the device axis so batch statistics are averaged across devices."""
    if axis_name is not None and "axis_name" in getattr(model, "__dataclass_fields__", {}):
        return model.clone(axis_name=axis_name)
    return model


def model_variables(params: Any, batch_stats: Any) -> dict[str, Any]:
    """The variables `model.apply` takes: the params, and BatchNorm's statistics if any."""
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def example_losses(logits: jax.Array, labels: jax.Array, loss: str) -> jax.Array:
    """Per-example loss [B] of float32 logits [B, C] and integer labels [B]."""
    if loss == "mse":
        targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
        return 0.5 * jnp.sum((logits - targets) ** 2, axis=-1)
    if loss != "cross_entropy":
        raise ValueError(f"train.loss={loss!r} is not a loss; allowed: {', '.join(LOSSES)}")
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _all_finite(*trees: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for tree in trees for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves))


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    axis_name: str | None = None,
    shard_optimizer: bool = False,
    num_shards: int | None = None,
    loss: str = "cross_entropy",
    diagnostics: Callable[..., dict[str, jax.Array]] | None = None,
) -> TrainStep:
    """Builds the train step (see the module docstring for the metrics).

    Args:
      model: linen module, `model.apply(variables, x, train=True, rngs={"dropout": key},
        mutable=["batch_stats"])`.
      tx: the optimizer; its update gets the parameters (for weight decay).
      schedule: the learning-rate schedule inside `tx`, evaluated at `state.step` for logging.
      axis_name: the pmap axis, or None for a single device / jit with shardings.
      shard_optimizer: ZeRO-1 under pmap (`adamlab.training.zero.sharded_update`): gradients are
        reduce-scattered, `state.opt_state` holds this device's slices only, and parameters are
        all-gathered after the update. Needs `axis_name` and `num_shards` (the axis size).
      loss: "cross_entropy" or "mse" (see the module docstring).
      diagnostics: `stats(grads, updates, params, opt_state, learning_rate) -> {name: scalar}`
        (`adamlab.diagnostics.layer_stats.make_layer_stats`), returned as metrics["layers"];
        None (the default) builds the plain step. Not with `shard_optimizer`.

    Returns:
      `train_step(state, batch)` with batch {"image": float [B, H, W, C], "label": int [B]}.
    """
    if shard_optimizer and (axis_name is None or not num_shards):
        raise ValueError(
            "shard_optimizer=True is the pmap ZeRO-1 step: it needs axis_name and num_shards "
            f"(got axis_name={axis_name!r}, num_shards={num_shards!r}); under jit, shard the "
            "optimizer state with shardings instead (adamlab.zero.opt_state_shardings)"
        )
    model = _with_axis_name(model, axis_name)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        # fold_in(step): a fresh dropout key per step, derived from the one seed, reproducible on
        # resume; fold_in(device) under pmap so shards of the batch get independent masks.
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        if axis_name is not None:
            key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
        labels = batch["label"]

        def loss_fn(params):
            images = batch["image"]
            logits, new_variables = model.apply(
                model_variables(params, state.batch_stats),
                images,
                train=True,
                rngs={"dropout": key},
                mutable=["batch_stats"],
            )
            mean_loss = example_losses(logits, labels, loss).mean()
            return mean_loss, (logits, new_variables.get("batch_stats", state.batch_stats))

        (loss_value, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
        if shard_optimizer:
            loss_value, accuracy = jax.lax.pmean((loss_value, accuracy), axis_name)
            params, opt_state, norms = zero.sharded_update(
                tx,
                grads,
                state.opt_state,
                state.params,
                axis_name=axis_name,
                num_shards=num_shards,
            )
            grad_norm, update_norm = norms["grad_norm"], norms["update_norm"]
            finite = jnp.isfinite(loss_value) & norms["finite"]
        else:
            if axis_name is not None:
                # Equal shard sizes, so the mean of per-device means is the global mean.
                grads, loss_value, accuracy = jax.lax.pmean(
                    (grads, loss_value, accuracy), axis_name
                )
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            grad_norm, update_norm = optax.tree.norm(grads), optax.tree.norm(updates)
            finite = _all_finite(loss_value, grads, updates)
        param_norm = optax.tree.norm(params)
        learning_rate = jnp.asarray(schedule(state.step), jnp.float32)
        metrics = {
            "loss": loss_value,
            "accuracy": accuracy,
            "learning_rate": learning_rate,
            "grad_norm": grad_norm,
            "update_norm": update_norm,
            "param_norm": param_norm,
            "update_param_ratio": update_norm / param_norm,
            "finite": finite,
        }
        if diagnostics is not None:
            metrics["layers"] = diagnostics(grads, updates, params, opt_state, learning_rate)
        new_state = state.replace(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
        )
        return new_state, metrics

    return train_step


def evaluation_params(state: TrainState, eval_params: Callable | None) -> Any:
    """The params a run is evaluated, checkpointed for inference and shipped at: its
    optimizer's evaluation point where the optimizer's table entry names one
    (`Entry.eval_params(opt_state, params)`: Schedule-Free's average x, formed from the params
    y where the gradients are taken and its state), else the params themselves."""
    return state.params if eval_params is None else eval_params(state.opt_state, state.params)


def make_batch_stats_step(
    model: nn.Module, eval_params: Callable | None, *, axis_name: str | None = None
) -> Callable[[TrainState, Batch], TrainState]:
    """`(state, batch) -> state` with BatchNorm's running statistics moved one step of their
    average towards `batch`'s, taken at the evaluation point (a forward pass in train mode, no
    gradient, no dropout key drawn from the run's).

    Training keeps the statistics of the params it steps; an evaluation point elsewhere
    (Schedule-Free's x, not its gradient point y) has its own, which a few such passes over
    training batches recompute (the schedulefree package's advice for BatchNorm models).
    """
    model = _with_axis_name(model, axis_name)

    def batch_stats_step(state: TrainState, batch: Batch) -> TrainState:
        _, new_variables = model.apply(
            model_variables(evaluation_params(state, eval_params), state.batch_stats),
            batch["image"],
            train=True,
            rngs={"dropout": jax.random.key(0)},  # unused: only BatchNorm models get here
            mutable=["batch_stats"],
        )
        return state.replace(batch_stats=new_variables["batch_stats"])

    return batch_stats_step


def make_eval_step(
    model: nn.Module,
    num_classes: int,
    *,
    axis_name: str | None = None,
    loss: str = "cross_entropy",
    eval_params: Callable | None = None,
) -> EvalStep:
    """Builds the eval step, which returns sums so batches and devices add up exactly.

    Padding examples (`batch["mask"]` False) count nowhere; their labels may be anything. The
    model is evaluated at `evaluation_params(state, eval_params)`.

    Returns:
      `eval_step(state, batch) -> {"loss_sum": float32 [], "correct": int32 [],
      "count": int32 [], "confusion": int32 [num_classes, num_classes]}`, where
      confusion[true, predicted] counts examples. Under pmap the sums are over all devices.
    """

    def eval_step(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
        params = evaluation_params(state, eval_params)
        logits = model.apply(
            model_variables(params, state.batch_stats), batch["image"], train=False
        )
        mask = batch.get("mask")
        if mask is None:
            mask = jnp.ones(logits.shape[:1], bool)
        mask = mask.astype(bool)
        # Padding rows get label 0 and zero weight, so out-of-range pad labels cannot index.
        labels = jnp.where(mask, batch["label"], 0)
        predictions = jnp.argmax(logits, -1)
        losses = example_losses(logits, labels, loss)
        sums = {
            "loss_sum": jnp.sum(jnp.where(mask, losses, 0.0)),
            "correct": jnp.sum(mask & (predictions == labels), dtype=jnp.int32),
            "count": jnp.sum(mask, dtype=jnp.int32),
            "confusion": jnp.zeros((num_classes, num_classes), jnp.int32)
            .at[labels, predictions]
            .add(mask.astype(jnp.int32)),
        }
        if axis_name is not None:
            sums = jax.lax.psum(sums, axis_name)
        return sums

    return eval_step
