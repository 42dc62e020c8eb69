"""Kingma & Ba 2015's models and baseline optimizers, beside the library's CNN and Adam family.

Models (`create_model`): "logreg" (multinomial logistic regression on the flattened image) and
"mlp" (hidden ReLU layers with dropout), the two setups of the Adam paper's Figures 1-2; any other
name falls back to `adamlab.models.create_model` ("cnn", "resnet").

Optimizers (`make_optimizer`): the paper's baselines come from optax, the well-kept reference for
them ("sgd_nesterov" = `optax.sgd(momentum, nesterov=True)`, "adagrad", "rmsprop"); every name of
`adamlab.optim.names()` ("adam", ...) builds ours. Schedules: "constant", "warmup_cosine" (the
training loop's, from `adamlab.optimizer_factory`) and "inverse_sqrt", the paper's alpha/sqrt(t)
decay for logistic regression.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import optax

from adamlab import config_dict, models, optim
from adamlab.training import optimizer_factory

MODELS: tuple[str, ...] = ("logreg", "mlp", *models.MODELS)
BASELINES: tuple[str, ...] = ("sgd_nesterov", "adagrad", "rmsprop")
SCHEDULES: tuple[str, ...] = (*optimizer_factory.SCHEDULES, "inverse_sqrt")


class LogisticRegression(nn.Module):
    """Softmax regression: one dense layer on the flattened image (64 -> 10 on digits)."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        del train  # No dropout or statistics.
        return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)).astype(jnp.float32))


class MLP(nn.Module):
    """Dense ReLU layers with dropout after each (the paper: 2 x 1000 units, dropout)."""

    num_classes: int
    hidden: Sequence[int] = (1000, 1000)
    dropout_rate: float = 0.5

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        x = x.reshape((x.shape[0], -1)).astype(jnp.float32)
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


def create_model(model_config: Any, num_classes: int) -> nn.Module:
    """Builds "logreg" / "mlp" here, or any `adamlab.models` model by falling back to it.

    Args:
      model_config: {"name": "logreg"} or {"name": "mlp", "hidden": (...), "dropout_rate": r},
        or an `adamlab.models` config.
      num_classes: size of the logits.
    """
    config = config_dict.as_dict(model_config, "model config")
    name = config.get("name")
    if name not in ("logreg", "mlp"):
        if name not in models.MODELS:
            raise ValueError(f"model.name={name!r} is not a model; allowed: {', '.join(MODELS)}")
        return models.create_model(model_config, num_classes)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} must be an int >= 2")
    allowed = {"logreg": {"name"}, "mlp": {"name", "hidden", "dropout_rate"}}[name]
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ValueError(f"model fields {unknown} are not fields of {name!r}; allowed: {allowed}")
    if name == "logreg":
        return LogisticRegression(num_classes)
    hidden = tuple(config.get("hidden", MLP.hidden))
    rate = config.get("dropout_rate", MLP.dropout_rate)
    if not hidden or any(not isinstance(h, int) or h < 1 for h in hidden):
        raise ValueError(f"model.hidden={hidden} must be a non-empty sequence of ints >= 1")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"model.dropout_rate={rate} must be in [0, 1)")
    return MLP(num_classes, hidden, rate)


def make_schedule(
    name: str, learning_rate: float, total_steps: int, warmup_steps: int = 0
) -> optax.Schedule:
    """ "constant" | "warmup_cosine" (see `optimizer_factory.make_schedule`) | "inverse_sqrt".

    "inverse_sqrt" is Kingma & Ba's alpha_t = alpha / sqrt(t) for logistic regression, with t the
    1-based step (so the first step uses alpha).
    """
    if name not in SCHEDULES:
        raise ValueError(f"schedule={name!r} is unknown; allowed: {', '.join(SCHEDULES)}")
    if name == "inverse_sqrt":
        if not learning_rate > 0:
            raise ValueError(f"learning_rate={learning_rate!r} must be > 0")
        return lambda count: learning_rate / jnp.sqrt(count + 1.0)
    config = {
        "name": "adam",
        "learning_rate": learning_rate,
        "schedule": name,
        "warmup_steps": warmup_steps,
    }
    return optimizer_factory.make_schedule(config, total_steps)


def make_optimizer(
    name: str, schedule: optax.Schedule, **hparams: Any
) -> optax.GradientTransformation:
    """A baseline from optax or one of our Adam family, with learning rate `schedule`.

    Args:
      name: "sgd_nesterov" (momentum 0.9 by default), "adagrad", "rmsprop", or a name of
        `adamlab.optim.names()`.
      schedule: the learning rate, a schedule or a float.
      **hparams: the optimizer's own hyperparameters (optax's names), e.g. momentum, eps, b2.
    """
    if name == "sgd_nesterov":
        return optax.sgd(schedule, momentum=hparams.pop("momentum", 0.9), nesterov=True, **hparams)
    if name == "adagrad":
        return optax.adagrad(schedule, **hparams)
    if name == "rmsprop":
        return optax.rmsprop(schedule, **hparams)
    if name not in optim.names():
        raise ValueError(
            f"optimizer {name!r} is unknown; allowed: {', '.join(BASELINES + optim.names())}"
        )
    return optim.create(name, learning_rate=schedule, **hparams)
