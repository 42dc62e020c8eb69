"""The one place where a config's `optimizer` section becomes a GradientTransformation.

    tx, schedule = make_optimizer(config.optimizer, total_steps)

Names are those of `adamlab.optim.alias.TABLE`: ours (our code, or with
`implementation="optax"` its optax twin) and optax's baselines sgd, adagrad and rmsprop.
configs/digits.py documents each field, docs/training.md the parameter groups and sweeps.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adamlab import config_dict, optim
from adamlab.optim import registry, validation

IMPLEMENTATIONS: tuple[str, ...] = ("ours", "optax")
SCHEDULES: tuple[str, ...] = ("constant", "warmup_cosine", "inverse_sqrt", "warmup_constant")
WARMUP_SCHEDULES: tuple[str, ...] = ("warmup_cosine", "warmup_constant")  # take a warmup
BASELINES: tuple[str, ...] = tuple(n for n in registry.names("optax") if n not in optim.names())
# Numeric hyperparameters that can differ between the runs of one compiled program: every
# table entry's, and the factory's own (the L2 term, the warmup's length).
SWEEPABLE: tuple[str, ...] = (
    *dict.fromkeys(h for n in registry.names("optax") for h in registry.entry(n).sweepable),
    "l2",
    "warmup_fraction",
)
# Fields consumed here; every other non-None field is a hyperparameter of the optimizer.
_FACTORY_FIELDS = (
    "name",
    "implementation",
    "convention",
    "learning_rate",
    "schedule",
    "warmup_steps",
    "warmup_fraction",
    "l2",
    "fused",
    "groups",
)
# Fields a group cannot set, and why.
_RUN_FIELDS = {
    "implementation": "it is the run's (runs.implementations switches every group together)",
    "groups": "groups do not nest",
}
_GROUP_ALLOWED = "a dict {'params': regex of parameter paths, <optimizer field>: value, ...}"
_GROUPS_ALLOWED = f"a tuple of groups, each {_GROUP_ALLOWED}"


def names() -> tuple[str, ...]:
    """Every optimizer name a config may use: ours, then the baselines."""
    return registry.names("optax")


hyperparameters = registry.hyperparameters  # the keyword hyperparameters optimizer `name` takes


def eval_params(optimizer_config: Any) -> Callable[[Any, Any], Any] | None:
    """`(opt_state, params) -> params`: where the optimizer of `optimizer_config` is evaluated
    (its table entry's `eval_params`, Schedule-Free's average x), for ours and its optax twin;
    None: the params. With groups, the one of any group's optimizer (Schedule-Free's x on the
    leaves it trains, the params elsewhere: `optim.schedule_free_eval_params`)."""
    config = config_dict.as_dict(optimizer_config, "optimizer config")
    names = [config["name"], *(group_config(config, g)["name"] for g in groups_of(config))]
    points = [registry.entry(n).eval_params for n in names]  # the table names one: SF's x
    return next((p for p in points if p is not None), None)


def optimizer_hparams(optimizer_config: Any) -> dict[str, Any]:
    """The hyperparameters passed to the optimizer: non-None fields not used by the factory."""
    config = config_dict.as_dict(optimizer_config, "optimizer config")
    return {k: v for k, v in config.items() if k not in _FACTORY_FIELDS and v is not None}


def validate_optimizer_config(optimizer_config: Any, total_steps: int) -> None:
    """Raises ValueError naming the field, the value and what is allowed.

    Checks the factory's own fields by the rules of `adamlab.optim.validation`, at the top level
    and in every group (its whole config: the top level's fields with the group's, named
    `optimizer.groups[i].<field>`); the optimizer's hyperparameters are checked by its
    constructor when `make_optimizer` builds it, and the groups' regexes against the parameter
    paths when the optimizer is initialised (`param_labels`), both before any training step.
    """
    config = config_dict.as_dict(optimizer_config, "optimizer config")
    if not validation.is_int(total_steps, 1):
        raise ValueError(f"total_steps={total_steps!r} must be an int >= 1")
    _check_section(config, total_steps, "optimizer")
    raw = config.get("groups") or ()
    if isinstance(raw, str | Mapping):
        raise ValueError(f"optimizer.groups={raw!r} must be {_GROUPS_ALLOWED}")
    for i, group in enumerate(raw):
        where = f"optimizer.groups[{i}]"
        _check_group(group, where)
        _check_section(group_config(config, group), total_steps, where)


def _check_group(group: Any, where: str) -> None:
    """A group is a mapping with a `params` regex and fields of the optimizer config."""
    if not isinstance(group, Mapping) and not hasattr(group, "to_dict"):
        raise ValueError(f"{where}={group!r} must be {_GROUP_ALLOWED}")
    group = config_dict.as_dict(group, where)
    pattern = group.get("params")
    if not isinstance(pattern, str):
        raise ValueError(f"{where}.params={pattern!r} must be {_GROUP_ALLOWED}")
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{where}.params={pattern!r} is not a regex ({e})") from None
    for field, why in _RUN_FIELDS.items():
        if field in group:
            raise ValueError(
                f"{where}.{field}={group[field]!r} cannot be set in a group: {why}; allowed: "
                f"params and the other optimizer fields"
            )


def _check_section(config: dict[str, Any], total_steps: int, where: str) -> None:
    """The factory's fields of one optimizer config; errors name `where.<field>`."""
    name = config.get("name")
    if name not in names():
        raise ValueError(f"{where}.name={name!r} is unknown; allowed: {', '.join(names())}")
    implementation = config.get("implementation", "ours")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"{where}.implementation={implementation!r} is unknown; "
            f"allowed: {', '.join(IMPLEMENTATIONS)}"
        )
    if name in BASELINES and implementation != "optax":
        raise ValueError(
            f"{where}.name={name!r} is a baseline from optax, not ours: set "
            "optimizer.implementation='optax' (ours are: " + ", ".join(optim.names()) + ")"
        )
    if implementation == "optax" and registry.entry(name).twin is None:
        raise ValueError(
            f"optimizer.implementation='optax' does not exist for {name!r}: optax does not "
            "implement it; use implementation='ours'"
        )
    convention = config.get("convention") or "optax"
    if implementation == "optax" and convention != "optax":
        raise ValueError(
            f"{where}.convention={convention!r} exists for ours only: the optax twin "
            "follows optax's numerics; use implementation='ours' or convention='optax'"
        )
    if config.get("fused") and implementation != "ours":
        raise ValueError(
            f"{where}.fused=True exists for ours only, not for "
            f"implementation={implementation!r} {name!r}; set optimizer.fused=False"
        )
    schedule = config.get("schedule", "constant")
    if schedule not in SCHEDULES:
        raise ValueError(
            f"{where}.schedule={schedule!r} is unknown; allowed: {', '.join(SCHEDULES)}"
        )
    fields = {k: config.get(k) for k in ("learning_rate", "l2", "warmup_fraction", "fused")}
    fields = {k: v for k, v in fields.items() if v is not None or k == "learning_rate"}
    for field, value, allowed in validation.violations(fields):
        raise ValueError(f"{where}.{field}={value!r} must be {allowed}")
    warmup = config.get("warmup_steps", 0) or 0
    if not validation.is_int(warmup, 0):
        raise ValueError(f"{where}.warmup_steps={warmup!r} must be an int >= 0")
    if schedule not in WARMUP_SCHEDULES and warmup:
        raise ValueError(
            f"{where}.warmup_steps={warmup} needs schedule='warmup_cosine' or "
            f"'warmup_constant' (the {schedule!r} schedule has no warmup); set warmup_steps=0 "
            "or change the schedule"
        )
    fraction = config.get("warmup_fraction")
    if fraction is not None and (schedule not in WARMUP_SCHEDULES or warmup):
        raise ValueError(
            f"{where}.warmup_fraction={fraction!r} must be in [0, 1), with schedule="
            f"'warmup_cosine' or 'warmup_constant' (got {schedule!r}) and warmup_steps=0 (got "
            f"{warmup}): it replaces warmup_steps"
        )
    if schedule == "warmup_cosine" and warmup >= total_steps:
        raise ValueError(
            f"{where}.warmup_steps={warmup} must be < total_steps={total_steps}: the cosine "
            "decay needs at least one step after the warmup"
        )


def make_schedule(
    optimizer_config: Any, total_steps: int, peak: Any = None, warmup_fraction: Any = None
) -> optax.Schedule:
    """The learning-rate schedule of `optimizer.schedule`: "constant", "warmup_cosine" (a linear
    warmup over `warmup_steps`, then cosine to 0 at the last step), "inverse_sqrt" or
    "warmup_constant" (the linear warmup, then constant: Schedule-Free's, which needs no decay).

    "warmup_cosine" is optax's `warmup_cosine_decay_schedule(0, lr, warmup_steps, total_steps,
    0)`, built from the same two pieces and join so that `peak` (default: `learning_rate`) may be
    a traced array, as in a vectorized sweep; optax's function branches in Python on the peak.
    "inverse_sqrt" is alpha_t = alpha / sqrt(t) with t the 1-based step (the first step uses
    alpha), Kingma & Ba 2015's schedule for logistic regression.
    With `warmup_fraction` (default: the config's) the warmup lasts that fraction of
    `total_steps`, possibly a traced array (a swept fraction, `_fractional_warmup_cosine`).
    """
    validate_optimizer_config(optimizer_config, total_steps)
    config = config_dict.as_dict(optimizer_config, "optimizer config")
    return _schedule(config, total_steps, peak, warmup_fraction)


def _schedule(config: dict, total_steps: int, peak: Any, warmup_fraction: Any) -> optax.Schedule:
    """`make_schedule` of a validated config."""
    peak = float(config["learning_rate"]) if peak is None else peak
    if warmup_fraction is None:
        warmup_fraction = config.get("warmup_fraction")
    schedule = config.get("schedule", "constant")
    warmup = config.get("warmup_steps", 0) or 0
    if schedule == "constant":
        return optax.constant_schedule(peak)
    if schedule == "inverse_sqrt":
        return lambda count: peak / jnp.sqrt(count + 1.0)
    if schedule == "warmup_constant":
        steps = warmup if warmup_fraction is None else warmup_fraction * total_steps
        return _warmup_constant(peak, steps)
    if warmup_fraction is not None:
        return _fractional_warmup_cosine(peak, warmup_fraction, total_steps)
    return optax.join_schedules(
        [
            optax.linear_schedule(init_value=0.0, end_value=peak, transition_steps=warmup),
            optax.cosine_decay_schedule(
                init_value=peak, decay_steps=total_steps - warmup, alpha=0.0
            ),
        ],
        [warmup],
    )


def _warmup_constant(peak: Any, steps: Any) -> optax.Schedule:
    """peak min(1, count / steps): a linear warmup from 0 over `steps` (possibly a traced
    array, a swept fraction of the run), then the peak; no warmup for 0 steps."""

    def schedule(count):
        w = jnp.asarray(steps, jnp.float32)
        warm = peak * jnp.asarray(count, jnp.float32) / jnp.where(w > 0, w, 1.0)
        return jnp.where(count < w, warm, peak)

    return schedule


def _fractional_warmup_cosine(peak: Any, fraction: Any, total_steps: int) -> optax.Schedule:
    """optax's warmup_cosine_decay_schedule(0, peak, w, total_steps, 0) with a real-valued
    warmup w = fraction * total_steps that may be traced: jnp.where instead of Python branches."""

    def schedule(count):
        t = jnp.asarray(count, jnp.float32)
        w = jnp.asarray(fraction, jnp.float32) * total_steps
        warm = peak * t / jnp.where(w > 0, w, 1.0)
        progress = jnp.clip((t - w) / (total_steps - w), 0.0, 1.0)
        return jnp.where(t < w, warm, peak * 0.5 * (1.0 + jnp.cos(jnp.pi * progress)))

    return schedule


def _base_optimizer(config: dict[str, Any], schedule: Any, hparams: dict[str, Any]):
    """Ours (`optim.create`) or the optax twin (`optim.reference`; a baseline's only one)."""
    name = config["name"]
    if config.get("implementation", "ours") == "optax":
        return optim.reference(name, learning_rate=schedule, **hparams)
    convention = config.get("convention") or "optax"
    if convention != "optax":
        hparams = dict(hparams, convention=convention)
    if config.get("fused"):  # the same rule and state, fewer divisions
        hparams = dict(hparams, fused=True)
    return optim.create(name, learning_rate=schedule, **hparams)


def path_of(path: tuple) -> str:
    """A tree path as "/"-joined keys: ("Dense_1", "kernel") -> "Dense_1/kernel"."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def groups_of(optimizer_config: Any) -> tuple[dict[str, Any], ...]:
    """`optimizer.groups` as dicts (a config file's ConfigDicts, config.json's lists); () if
    unset."""
    config = config_dict.as_dict(optimizer_config, "optimizer config")
    return tuple(config_dict.as_dict(g, "optimizer group") for g in config.get("groups") or ())


def group_config(config: dict[str, Any], group: Any) -> dict[str, Any]:
    """A group's whole optimizer config: the top level's fields, overridden by the group's.

    A group inherits every field it does not set (None: its optimizer's default), as a
    PyTorch param group takes the optimizer's defaults for the options it does not name.
    """
    group = config_dict.as_dict(group, "optimizer group")
    return {k: v for k, v in config.items() if k != "groups"} | {
        k: v for k, v in group.items() if k != "params"
    }


def param_labels(groups: Sequence[str] = (), frozen: Sequence[str] = ()) -> Callable[[Any], Any]:
    """params -> the same tree of labels, the one partition of the parameters:

    * "frozen": the path matches a regex of `frozen` (`init.frozen`; zero updates), whatever
      group it is in, as PyTorch skips a frozen parameter (no gradient) of any param group;
    * "group<i>": it matches `groups[i]`, the `params` regex of `optimizer.groups[i]`;
    * "trained": no group's; the top-level optimizer.

    Paths are "/"-joined keys, e.g. "Dense_1/kernel"; `re.search` semantics. Calling the
    function raises ValueError, naming the field, the pattern and the paths, when a regex
    matches no parameter or two groups match one (a parameter has one optimizer).
    """
    compiled = [re.compile(p) for p in groups]
    frozen_compiled = [re.compile(p) for p in frozen]

    def labels(params: Any) -> Any:
        paths = [path_of(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
        matches = {path: [i for i, c in enumerate(compiled) if c.search(path)] for path in paths}
        if paths:  # No leaves, nothing to label: optax.tree_map_params' placeholder (ZeRO-1).
            _check_matches(groups, frozen, matches)

        def label(path, _):
            key = path_of(path)
            if any(c.search(key) for c in frozen_compiled):
                return "frozen"
            return f"group{matches[key][0]}" if matches[key] else "trained"

        return jax.tree_util.tree_map_with_path(label, params)

    return labels


def _check_matches(groups: Sequence[str], frozen: Sequence[str], matches: dict) -> None:
    """Every regex matches a path, and no path two groups' (`param_labels`)."""
    paths = ", ".join(matches)
    for i, pattern in enumerate(groups):
        if not any(i in found for found in matches.values()):
            raise ValueError(
                f"optimizer.groups[{i}].params={pattern!r} matches no parameter; a group's "
                f"regex must match (re.search) one of the parameter paths: {paths}"
            )
    for pattern in frozen:
        if not any(re.search(pattern, path) for path in matches):
            raise ValueError(
                f"init.frozen pattern {pattern!r} matches no parameter; the parameter paths: "
                f"{paths}"
            )
    for path, found in matches.items():
        if len(found) > 1:
            named = " and ".join(f"optimizer.groups[{i}].params={groups[i]!r}" for i in found)
            raise ValueError(
                f"{named} both match the parameter {path!r}; a parameter belongs to one group "
                f"at most: make the regexes disjoint (e.g. anchor them, '^Dense_1/')"
            )


def _build(config: dict[str, Any], total_steps: int, frozen: Sequence[str], values: dict):
    """The optimizer of one run: `config` with `values` (swept hyperparameters) applied, as
    `optax.partition` over `param_labels` when it has groups or frozen leaves."""
    groups = groups_of(config)
    tx = _build_group(config, total_steps, values)
    if not groups and not frozen:
        return tx
    transforms = {"trained": tx}
    for i, group in enumerate(groups):
        # A swept value is the top-level field's: it reaches the groups that inherit it.
        inherited = {k: v for k, v in values.items() if k not in group}
        try:
            transforms[f"group{i}"] = _build_group(
                group_config(config, group), total_steps, inherited
            )
        except ValueError as e:
            raise ValueError(
                f"optimizer.groups[{i}] (params={group['params']!r}; it inherits every field "
                f"it does not set, None: its optimizer's default): {e}"
            ) from None
    if frozen:
        transforms["frozen"] = optax.set_to_zero()
    return optax.partition(transforms, param_labels([g["params"] for g in groups], frozen))


def _build_group(config: dict[str, Any], total_steps: int, values: dict):
    """One group's optimizer (or the top level's), without the partition."""
    values = dict(values)
    peak = values.pop("learning_rate", None)
    fraction = values.pop("warmup_fraction", None)
    swept_l2 = "l2" in values
    l2 = values.pop("l2", config.get("l2") or 0.0)
    schedule = _schedule(config, total_steps, peak, fraction)
    tx = _base_optimizer(config, schedule, optimizer_hparams(config) | values)
    if swept_l2 or l2 > 0:  # L2 in the loss: its gradient l2 * params joins the gradient.
        tx = optax.chain(optim.add_decayed_weights.unchecked(l2), tx)
    return tx


def make_optimizer(
    optimizer_config: Any,
    total_steps: int,
    *,
    frozen: Sequence[str] = (),
    swept: Sequence[str] = (),
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Builds `(tx, schedule)`; `tx` takes its learning rate from `schedule` at its own count.

    Args:
      optimizer_config: ConfigDict (or mapping): name, implementation, convention,
        learning_rate, schedule, warmup_steps, l2, the optimizer's hyperparameters and
        `groups` (docs/training.md).
      total_steps: length of the run, the end of the cosine decay.
      frozen: regexes of parameter paths that get zero updates (the "frozen" label of
        `param_labels`, `optax.set_to_zero`); their optimizer state is never allocated.
      swept: hyperparameters (of SWEEPABLE) held in the optimizer state by
        `optax.inject_hyperparams`; build one run's optimizer with `with_values(tx, ...)`.

    Raises:
      ValueError: an unknown name/implementation/schedule, a bad learning rate or warmup, a
        hyperparameter the optimizer rejects, or a field that cannot be swept, at the top level
        or in a group (named `optimizer.groups[i]`). A group's regex is checked against the
        parameters by `tx.init` (`param_labels`).
    """
    config = config_dict.as_dict(optimizer_config, "optimizer config")
    validate_optimizer_config(config, total_steps)
    schedule = _schedule(config, total_steps, None, None)
    if not swept:
        return _build(config, total_steps, frozen, {}), schedule
    # A swept field is the top level's: it reaches every group that does not set it.
    sections = [("", config, {})] + [
        (f" (optimizer.groups[{i}])", group_config(config, group), group)
        for i, group in enumerate(groups_of(config))
    ]
    for name in swept:
        for where, section, own in sections:
            accepted = _sweepable(section)
            if name not in own and name not in accepted:
                allowed = [h for h in SWEEPABLE if h in accepted]
                raise ValueError(
                    f"optimizer.{name} cannot be swept in one program for {section['name']}"
                    f"{where}; sweepable: {', '.join('optimizer.' + h for h in allowed)}"
                )
    factory = lambda **values: _build(config, total_steps, frozen, values)
    # inject_hyperparams binds its arguments to the factory's signature: name them.
    factory.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY) for n in swept]
    )
    # optim.inject_hyperparams keeps them float32 whatever the params (optax #1414).
    return optim.inject_hyperparams(factory), schedule


def _sweepable(config: dict[str, Any]) -> set[str]:
    """The fields one compiled program may vary for optimizer config `config`."""
    accepted = {*registry.entry(config["name"]).sweepable, "l2"}
    if config.get("schedule") in WARMUP_SCHEDULES and not config.get("warmup_steps"):
        accepted.add("warmup_fraction")  # Replaces warmup_steps (validate_optimizer_config).
    return accepted


def with_values(tx: Any, values: dict[str, Any]) -> optax.GradientTransformation:
    """One run's optimizer: `make_optimizer(..., swept=...)`'s tx called with its values (or
    the tx itself when nothing is swept). Values become float32 arrays: inject_hyperparams
    holds only arrays and Python numbers as hyperparameters, not numpy scalars."""
    if not values:
        return tx
    return tx(**{k: jnp.asarray(v, jnp.float32) for k, v in values.items()})
