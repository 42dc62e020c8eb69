"""Builds the optimizer and its learning-rate schedule from the `optimizer` part of a config.

    tx, schedule = make_optimizer(config.optimizer, total_steps)

`implementation` picks whose code runs: "ours" -> `adamlab.optim.create` (the from-scratch
implementations under study), "optax" -> `adamlab.optim.reference` (the optax twin, the ground
truth). Same name, same hyperparameters, so the two can be swapped with one config field.

Hyperparameters: every field of the optimizer config other than the factory's own (name,
implementation, learning_rate, schedule, warmup_steps) whose value is not None is passed on under
its own name (optax's names: b1, b2, eps, eps_root, weight_decay, nesterov, ...). None means "the
optimizer's default"; `adamlab.optim` rejects hyperparameters the optimizer does not take.
"""

from __future__ import annotations

import math
from typing import Any

import optax

from adamlab import config_dict

IMPLEMENTATIONS: tuple[str, ...] = ("ours", "optax")
SCHEDULES: tuple[str, ...] = ("constant", "warmup_cosine")
# Fields consumed here; all other non-None fields are optimizer hyperparameters.
_FACTORY_FIELDS = ("name", "implementation", "learning_rate", "schedule", "warmup_steps")


def optimizer_hparams(optimizer_config: Any) -> dict[str, Any]:
    """The hyperparameters passed to the optimizer: non-None fields not used by the factory."""
    config = config_dict.as_dict(optimizer_config, "optimizer config")
    return {k: v for k, v in config.items() if k not in _FACTORY_FIELDS and v is not None}


def validate_optimizer_config(optimizer_config: Any, total_steps: int) -> None:
    """Raises ValueError naming the field, the value and what is allowed.

    Checks the factory's own fields; hyperparameter values are checked by `adamlab.optim` when
    the optimizer is built (which `make_optimizer` does before any training step).
    """
    from adamlab import optim  # lazily: keeps this module importable while optim is built

    config = config_dict.as_dict(optimizer_config, "optimizer config")
    name = config.get("name")
    if name not in optim.names():
        raise ValueError(f"optimizer.name={name!r} is unknown; allowed: {', '.join(optim.names())}")
    implementation = config.get("implementation", "ours")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"optimizer.implementation={implementation!r} is unknown; "
            f"allowed: {', '.join(IMPLEMENTATIONS)}"
        )
    schedule = config.get("schedule", "constant")
    if schedule not in SCHEDULES:
        raise ValueError(
            f"optimizer.schedule={schedule!r} is unknown; allowed: {', '.join(SCHEDULES)}"
        )
    lr = config.get("learning_rate")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"optimizer.learning_rate={lr!r} must be a finite number > 0")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps={total_steps!r} must be an int >= 1")
    warmup = config.get("warmup_steps", 0) or 0
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"optimizer.warmup_steps={warmup!r} must be an int >= 0")
    if schedule == "constant" and warmup:
        raise ValueError(
            f"optimizer.warmup_steps={warmup} needs schedule='warmup_cosine' (the 'constant' "
            "schedule has no warmup); set warmup_steps=0 or change the schedule"
        )
    if schedule == "warmup_cosine" and warmup >= total_steps:
        raise ValueError(
            f"optimizer.warmup_steps={warmup} must be < total_steps={total_steps}: the cosine "
            "decay needs at least one step after the warmup"
        )


def make_schedule(optimizer_config: Any, total_steps: int, peak: Any = None) -> optax.Schedule:
    """The learning-rate schedule: constant, or linear warmup from 0 then cosine decay to 0.

    "warmup_cosine" rises linearly from 0 at step 0 to `learning_rate` at `warmup_steps`, then
    follows a half cosine down to 0 at `total_steps` and stays at 0 after it: optax's
    `warmup_cosine_decay_schedule(0, lr, warmup_steps, total_steps, 0)`, built from the same two
    pieces and join so that `peak` (default: `learning_rate`) may be a traced array, as in a
    vectorized sweep (`adamlab.multirun`); optax's function branches in Python on the peak.
    Same numbers as optax's (tests/test_sweep.py).
    """
    validate_optimizer_config(optimizer_config, total_steps)
    config = config_dict.as_dict(optimizer_config, "optimizer config")
    peak = float(config["learning_rate"]) if peak is None else peak
    if config.get("schedule", "constant") == "constant":
        return optax.constant_schedule(peak)
    warmup = config.get("warmup_steps", 0) or 0
    return optax.join_schedules(
        [
            optax.linear_schedule(init_value=0.0, end_value=peak, transition_steps=warmup),
            optax.cosine_decay_schedule(
                init_value=peak, decay_steps=total_steps - warmup, alpha=0.0
            ),
        ],
        [warmup],
    )


def make_optimizer(
    optimizer_config: Any, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Builds `(tx, schedule)`; `tx` takes its learning rate from `schedule` at its own count.

    Args:
      optimizer_config: ConfigDict (or mapping) with name, implementation ("ours" | "optax"),
        learning_rate, schedule ("constant" | "warmup_cosine"), warmup_steps and optional
        hyperparameters (None = the optimizer's default).
      total_steps: length of the run, the end of the cosine decay.

    Raises:
      ValueError: for an unknown name/implementation/schedule, a bad learning rate or warmup,
        or a hyperparameter the optimizer rejects.
    """
    from adamlab import optim

    schedule = make_schedule(optimizer_config, total_steps)
    config = config_dict.as_dict(optimizer_config, "optimizer config")
    build = optim.create if config.get("implementation", "ours") == "ours" else optim.reference
    tx = build(config["name"], learning_rate=schedule, **optimizer_hparams(config))
    return tx, schedule
