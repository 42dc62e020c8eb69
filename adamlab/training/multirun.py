"""Many training runs in one compiled program: ours and the optax twin in lockstep, vmapped
over swept hyperparameter values and seeds.

    result = train_runs(config, seeds=(0, 1, 2))                          # compare: ours vs optax
    result = train_runs(config, seeds=(0, 1), implementations=("ours",),
                        sweep={"learning_rate": (1e-3, 3e-3, 1e-2)})    # a vectorized sweep
    result.rows  # one dict per run: final train loss, validation/test metrics, parity, speed

The runs of one call share the optimizer name (`config.optimizer.name`) and everything but
the swept numeric hyperparameters and the seed, so their states have one structure and one
step trains them all:

- Members: one `TrainState` per implementation ("ours", "optax"), updated on the same batch
  by `steps.make_train_step` (the step `train_and_evaluate` uses) in one jitted step. The
  members of a run start from the same initialisation (`jax.random.key(seed)`, as
  `train.initial_state`) and see the same data order (`data.train_batches(seed=seed)`, as
  `train_and_evaluate`), so run (seed s) of a member is the run `train_and_evaluate` makes
  with `config.seed = s`. With two members the step also tracks the parity: the running max
  over steps of `relative_difference(ours.params, twin.params)`.
- Run axes: the carried state has leading axes [values, seeds]; the step is
  `vmap(vmap(step, (0, 0)), (0, None))`: each seed has its own batch stream (stacked on the
  seed axis), shared by all values of the sweep. Swept hyperparameters are state leaves via
  `optax.inject_hyperparams`, each run initialised with its own value, so one compiled
  program covers the whole grid. Without a sweep the optimizer is `make_optimizer`'s, the same
  as `train_and_evaluate`'s.
- On CPU, plain convolutions are computed as shifted slices and one matmul while the step is
  traced (`conv_as_matmul`, via `flax.linen.intercept_methods`): XLA's CPU backend runs a
  vmapped convolution (one kernel per run) as a dense grouped one, many times slower.
- Diverging runs (a too-large learning rate) do not stop the others: each member records
  whether all of its steps were finite (`finite` in the rows), and its metrics are reported
  as they are (NaN loss, chance accuracy).

The steps between two log or eval points run as one `lax.scan` over their stacked batches
(one call, no per-step dispatch or host work; compiled once per distinct chunk length).
Metrics stay on the device and are fetched every `train.log_every_steps`; validation runs every
`train.eval_every_steps` and at the end, test at the end. With a `workdir`, each run writes
`metrics.jsonl` and TensorBoard events to `workdir/<implementation>/<run name>/`.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
import os
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from adamlab import config_dict, data, models, optim
from adamlab.training import metrics, optimizer_factory, run_io, train
from adamlab.training.steps import make_eval_step, make_train_step
from adamlab.training.train_state import TrainState, create_train_state

# Numeric hyperparameters that can vary inside one compiled program (state leaves under
# optax.inject_hyperparams). Anything else changes shapes or the program: run it separately.
SWEEPABLE: tuple[str, ...] = ("learning_rate", "b1", "b2", "eps", "eps_root", "weight_decay")
_MAX_CHUNK = 100  # Most steps per compiled call (the chunk's batches are stacked on the host).
_TINY = 1e-30  # Floor of the parity's denominator: a leaf of zeros compares absolutely.


@flax.struct.dataclass
class Lockstep:
    """The carried state of one run: its members, the parity so far, finiteness per member."""

    members: tuple[TrainState, ...]
    parity: jax.Array  # float32 []: running max of relative_difference(members[0], members[1])
    finite: jax.Array  # bool [members]: every step so far had finite loss, grads and updates


@dataclasses.dataclass
class RunsResult:
    """What `train_runs` returns.

    Attributes:
      rows: one dict per run (member x value x seed), see `train_runs`.
      curves: implementation -> split ("train", "validation") -> (steps [T],
        {"loss", "accuracy"}: arrays [values, seeds, T]).
      params: implementation -> final parameters with leading axes [values, seeds] (host).
      num_steps, steps_per_sec, wall_time_s: of the one program that trained all the runs.
      phases: seconds spent in "setup" (data, initial states), "compile" (the training
        scans), "train" (the scans, their batches and metric fetches) and "evaluate"
        (validation and test, compilation of the eval step included).
    """

    rows: list[dict[str, Any]]
    curves: dict[str, dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]]
    params: dict[str, Any]
    num_steps: int
    steps_per_sec: float
    wall_time_s: float
    phases: dict[str, float] = dataclasses.field(default_factory=dict)


def relative_difference(a: Any, b: Any) -> jax.Array:
    """max over leaves of max|a - b| / max(max|b|, tiny): 0 iff the pytrees are equal.

    Normalised per leaf by the leaf's scale rather than per element: elementwise ratios blow up
    at weights that cross zero, where a 1-ulp difference would read as 100%.
    """
    per_leaf = jax.tree.map(
        lambda x, y: jnp.max(jnp.abs(x - y)) / jnp.maximum(jnp.max(jnp.abs(y)), _TINY), a, b
    )
    return jnp.max(jnp.stack(jax.tree.leaves(per_leaf)))


# ---------------------------------------------------------------------------- optimizers


def swept_optimizer(
    optimizer_config: Any, implementation: str, total_steps: int, names: Sequence[str]
):
    """`optax.inject_hyperparams` over `names`: call it with their values to get a `tx`.

    The learning rate, if swept, is the schedule's peak; every other field comes from the
    config as in `make_optimizer`.
    """
    config = config_dict.as_dict(optimizer_config, "optimizer config")
    fixed = {k: v for k, v in optimizer_factory.optimizer_hparams(config).items() if k not in names}
    build = optim.create if implementation == "ours" else optim.reference

    def factory(**values):
        peak = values.pop("learning_rate", config["learning_rate"])
        schedule = optimizer_factory.make_schedule(config, total_steps, peak)
        return build(config["name"], learning_rate=schedule, **fixed, **values)

    # inject_hyperparams binds its arguments to the factory's signature: name them.
    factory.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY) for n in names]
    )
    return optax.inject_hyperparams(factory)


def _check_sweep(
    config: ml_collections.ConfigDict, sweep: Mapping[str, Sequence[float]], num_steps: int
) -> None:
    """Raises train.ConfigError for a field that cannot be swept or a value that is invalid."""
    lengths = {len(v) for v in sweep.values()}
    if len(lengths) > 1 or 0 in lengths:
        raise train.ConfigError(f"swept values must be non-empty and equally long, got {sweep}")
    accepted = optim.hyperparameters(config.optimizer.name)
    for name, values in sweep.items():
        if name not in SWEEPABLE or name not in accepted:
            allowed = [h for h in SWEEPABLE if h in accepted]
            raise train.ConfigError(
                f"optimizer.{name} cannot be swept in one program for {config.optimizer.name}; "
                f"sweepable: {', '.join('optimizer.' + h for h in allowed)}"
            )
        for value in values:  # Concrete checks now: inside the program values are traced.
            swept = config.optimizer.to_dict() | {name: float(value)}
            try:
                optimizer_factory.make_optimizer(swept, num_steps)
            except ValueError as e:
                raise train.ConfigError(f"optimizer.{name}={value!r}: {e}") from e


# ---------------------------------------------------------------------------- CPU convolutions


def _is_plain_conv(conv: nn.Module, x: jax.Array) -> bool:
    """A 2-D, stride-1, undilated, ungrouped, unmasked "SAME" `nn.Conv` (the CNN's convs)."""
    ones = lambda v: v is None or v == 1 or all(d == 1 for d in v)
    return (
        type(conv) is nn.Conv
        and x.ndim == 4
        and len(tuple(conv.kernel_size)) == 2
        and conv.padding == "SAME"
        and ones(conv.strides)
        and ones(conv.input_dilation)
        and ones(conv.kernel_dilation)
        and conv.feature_group_count == 1
        and conv.mask is None
    )


def conv_as_matmul(next_fun, args, kwargs, context):
    """A `flax.linen.intercept_methods` interceptor: plain convs as shifted slices + one matmul.

    Why, on XLA:CPU: inside a loop body (the `lax.scan` over steps) a convolution runs far
    slower than in a plain jitted step (jax-ml/jax#12868, open; 16x for the digits CNN's step,
    `benchmarks/conv_in_scan.py`); and
    vmapped over runs, a convolution has one kernel per run, which XLA lowers to a grouped
    convolution and expands to a dense one (runs x the FLOPs). As slices and a batched matmul
    it stays runs x one run's work (compare with `benchmarks/sweep.py --conv plain`). Same sums
    in another order: results agree with
    `nn.Conv` to float32 rounding (tests/test_compare.py checks the runs against
    `train_and_evaluate`). Other convs (strided, dilated, grouped) and other modules run
    unchanged.
    """
    conv = context.module
    if context.method_name != "__call__" or len(args) != 1 or not _is_plain_conv(conv, args[0]):
        return next_fun(*args, **kwargs)
    kernel = conv.get_variable("params", "kernel")  # [kh, kw, in, out]
    dtype = conv.dtype or jnp.result_type(args[0], kernel)
    x, kernel = args[0].astype(dtype), kernel.astype(dtype)
    (kh, kw), (h, w) = kernel.shape[:2], x.shape[1:3]
    x = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    # [B, H, W, kh * kw * in], ordered as the kernel's reshape: (i, j) major, channels minor.
    patches = jnp.concatenate(
        [x[:, i : i + h, j : j + w] for i in range(kh) for j in range(kw)], axis=-1
    )
    y = jnp.dot(patches, kernel.reshape(-1, kernel.shape[-1]), precision=conv.precision)
    if conv.use_bias:
        y = y + conv.get_variable("params", "bias").astype(dtype)
    return y


def _intercepted(fn, enabled: bool):
    """`fn` with `conv_as_matmul` active while it is traced (when `enabled`)."""
    if not enabled:
        return fn

    def wrapped(*args):
        with nn.intercept_methods(conv_as_matmul):
            return fn(*args)

    return wrapped


# ---------------------------------------------------------------------------- the program


def _run_axes(fn, batch_axis: int | None):
    """vmap over [values, seeds]: the state carries both axes; batches one (seed) or none."""
    return jax.vmap(jax.vmap(fn, in_axes=(0, batch_axis)), in_axes=(0, None))


def make_lockstep_step(
    model, txs: Sequence[optax.GradientTransformation], schedule, *, conv_matmul: bool = False
):
    """`step(carry, batch) -> (carry, metrics)` for one run; metrics: per member loss/accuracy.

    `conv_matmul`: compute plain convolutions with `conv_as_matmul` (for vmapping on CPU).
    """
    train_steps = [_intercepted(make_train_step(model, tx, schedule), conv_matmul) for tx in txs]

    def step(carry: Lockstep, batch):
        outputs = [f(s, batch) for f, s in zip(train_steps, carry.members, strict=True)]
        members = tuple(state for state, _ in outputs)
        parity = carry.parity
        if len(members) == 2:
            parity = jnp.maximum(parity, relative_difference(members[0].params, members[1].params))
        finite = carry.finite & jnp.stack([m["finite"] for _, m in outputs])
        logged = tuple({k: m[k] for k in ("loss", "accuracy")} for _, m in outputs)
        return Lockstep(members, parity, finite), logged

    return step


def _initial_members(model, make_tx, image_shape, seeds: Sequence[int], values: Any) -> Any:
    """Every run's step-0 `TrainState` with leading axes [values, seeds].

    `make_tx(**values_of_one_run)` builds a run's optimizer; `values`: name -> [V] array, or {}
    for one value. Each seed's parameters are `create_train_state`'s (as `train_and_evaluate`'s
    `initial_state`, whose init is compiled once per model); with a sweep, the optimizer states
    of all values are initialised by one vmapped program (not V x S eager inits).
    """
    first = {k: v[0] for k, v in values.items()}
    states = [
        create_train_state(jax.random.key(s), model, make_tx(**first), image_shape) for s in seeds
    ]
    stacked = jax.tree.map(lambda *xs: np.stack(xs)[None], *states)  # [1, seeds]
    if not values:
        return stacked
    init = lambda v, params: make_tx(**v).init(params)
    init = jax.jit(jax.vmap(jax.vmap(init, in_axes=(None, 0)), in_axes=(0, None)))
    opt_state = init(values, jax.tree.map(lambda x: x[0], stacked.params))
    broadcast = lambda x: np.broadcast_to(x, (len(values[next(iter(values))]), *x.shape[1:]))
    return jax.device_get(jax.tree.map(broadcast, stacked).replace(opt_state=opt_state))


def _seed_chunks(config, seeds: Sequence[int]):
    """`send(k)` -> the next k steps' batches, leading axes [k, seeds] (a generator).

    Seed i's stream is `train_and_evaluate`'s (`data.train_batches(seed=seed)`); a chunk is
    drawn and stacked on the host before the scan that consumes it is dispatched.
    """
    streams = [
        data.train_batches(config.data, global_batch_size=config.train.batch_size, seed=s)
        for s in seeds
    ]
    k = yield
    while True:
        steps = [
            jax.tree.map(lambda *xs: np.stack(xs), *[next(s) for s in streams]) for _ in range(k)
        ]
        k = yield jax.tree.map(lambda *xs: np.stack(xs), *steps)


def _chunks(num_steps: int, every: Sequence[int], max_length: int) -> list[int]:
    """Lengths of the scans that cover steps 1..num_steps, each ending at a multiple of some
    interval in `every` (where metrics are fetched or runs evaluated) or at the end, none
    longer than `max_length`."""
    ends = sorted({s for e in every for s in range(e, num_steps, e)} | {num_steps})
    lengths, start = [], 0
    for end in ends:
        while end - start > max_length:
            lengths.append(max_length)
            start += max_length
        lengths.append(end - start)
        start = end
    return lengths


def _evaluate(eval_fn, carry: Lockstep, eval_data: list[dict]) -> list[dict]:
    """Per member, per run (as a [values, seeds] object array of metric dicts)."""
    totals = [None] * len(carry.members)
    for batch in eval_data:
        sums = jax.device_get(eval_fn(carry.members, batch))  # Per member, arrays [V, S, ...].
        totals = [metrics.accumulate_eval_sums(t, s) for t, s in zip(totals, sums, strict=True)]
    out = []
    for total in totals:
        shape = total["count"].shape
        grid = np.empty(shape, object)
        for v, s in np.ndindex(shape):
            grid[v, s] = metrics.metrics_from_sums({k: x[v, s] for k, x in total.items()})
        out.append(grid)
    return out


def _run_name(sweep: Mapping[str, Sequence[float]], v: int, seed: int) -> str:
    values = "".join(f"{k}={sweep[k][v]:.4g}_" for k in sweep)
    return f"{values}seed{seed}"


def train_runs(
    config: ml_collections.ConfigDict,
    *,
    seeds: Sequence[int],
    implementations: Sequence[str] = ("ours", "optax"),
    sweep: Mapping[str, Sequence[float]] | None = None,
    workdir: str | os.PathLike | None = None,
    progress: bool = False,
    conv_matmul: bool | None = None,
) -> RunsResult:
    """Trains every (implementation, swept value, seed) of `config.optimizer.name` at once.

    Args:
      config: an experiment config (configs/digits.py); `seed` and
        `optimizer.implementation` are replaced by `seeds` and `implementations`.
      seeds: one run per seed (and value); each is `train_and_evaluate` with `config.seed=s`.
      implementations: "ours" and/or "optax", trained in lockstep on the same batches; with
        both, rows carry the parity (see the module docstring).
      sweep: optimizer hyperparameter name -> values (all equally long, values zip together);
        None or {} for no sweep. Only `SWEEPABLE` numeric hyperparameters.
      workdir: where each run writes metrics.jsonl and TensorBoard events; None writes nothing.
      progress: show a tqdm bar (on a terminal only).
      conv_matmul: compute plain convolutions as `conv_as_matmul`; None: on CPU only.

    Returns:
      A `RunsResult`. Each row: optimizer, implementation, the swept values, seed, steps,
      final_train_loss / final_train_accuracy (means over the last log interval, as
      train_and_evaluate's train_loss), validation_{loss,accuracy,f1} (NaN without a
      validation split), test_{loss,accuracy,f1}, finite, parity (NaN with one member),
      steps_per_sec and wall_time_s of the program (compilation and evaluation included in the
      wall time, not in steps/s) and runs_in_program.

    Raises:
      train.ConfigError: an invalid config, implementation, seed or sweep.
    """
    sweep = {k: tuple(float(x) for x in v) for k, v in (sweep or {}).items()}
    implementations = tuple(implementations)
    bad = [i for i in implementations if i not in optimizer_factory.IMPLEMENTATIONS]
    if not implementations or bad or len(set(implementations)) != len(implementations):
        raise train.ConfigError(
            f"implementations={implementations!r}: give distinct names from "
            f"{', '.join(optimizer_factory.IMPLEMENTATIONS)}"
        )
    seeds = tuple(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise train.ConfigError(f"seeds={seeds!r} must be a non-empty sequence of ints >= 0")
    num_steps = train.validate_config(config)
    _check_sweep(config, sweep, num_steps)
    start = time.perf_counter()

    info = data.dataset_info(config.data)
    model = models.create_model(config.model, info.num_classes)
    num_values = len(next(iter(sweep.values()))) if sweep else 1
    shape = (num_values, len(seeds))
    grid = list(itertools.product(range(num_values), seeds))  # Row-major [values, seeds].

    # Per implementation, `make_tx(values)` builds a run's optimizer (values: name -> value;
    # {} without a sweep). All runs' optimizers share one structure, so one run's update serves
    # all of them (inject_hyperparams reads the values from the state).
    make_tx: dict[str, Any] = {}
    for impl in implementations:
        opt_config = config.optimizer.to_dict() | {"implementation": impl}
        if sweep:
            make_tx[impl] = swept_optimizer(opt_config, impl, num_steps, tuple(sweep))
        else:
            tx = optimizer_factory.make_optimizer(opt_config, num_steps)[0]
            make_tx[impl] = lambda tx=tx: tx
    schedule = optimizer_factory.make_schedule(config.optimizer, num_steps)  # Logging only.

    phases = dict.fromkeys(("setup", "compile", "train", "evaluate"), 0.0)
    values = {k: np.asarray(sweep[k], np.float32) for k in sweep}
    members = tuple(
        _initial_members(model, make_tx[i], info.image_shape, seeds, values)
        for i in implementations
    )
    carry = Lockstep(
        members=members,
        parity=np.zeros(shape, np.float32),
        finite=np.ones((*shape, len(implementations)), bool),
    )
    if conv_matmul is None:
        conv_matmul = jax.default_backend() == "cpu"  # See conv_as_matmul.
    first = {k: v[0] for k, v in sweep.items()}
    lockstep = make_lockstep_step(
        model, [make_tx[i](**first) for i in implementations], schedule, conv_matmul=conv_matmul
    )
    run_step = _run_axes(lockstep, 0)
    # K steps per call (a scan over K stacked batches per seed): no per-step dispatch, host
    # work or metric transfer; one compilation per distinct K (usually one).
    scan = jax.jit(lambda c, chunk: jax.lax.scan(run_step, c, chunk), donate_argnums=0)
    compiled: dict[int, Any] = {}
    eval_step = _intercepted(make_eval_step(model, info.num_classes), conv_matmul)
    eval_fn = jax.jit(
        _run_axes(lambda states, batch: tuple(eval_step(s, batch) for s in states), None)
    )
    splits = ("validation", "test") if info.num_validation else ("test",)
    eval_data = {
        split: list(
            data.eval_batches(
                config.data, split=split, global_batch_size=config.train.eval_batch_size
            )
        )
        for split in splits
    }

    writers = {}
    if workdir is not None:
        for m, impl in enumerate(implementations):
            for v, s in grid:
                path = pathlib.Path(workdir) / impl / _run_name(sweep, v, s)
                path.mkdir(parents=True, exist_ok=True)
                writers[m, v, s] = run_io.MetricWriter(path)
    seed_index = {s: i for i, s in enumerate(seeds)}

    def write(split: str, step: int, per_member: list) -> None:
        """per_member[m]: [values, seeds] array of metric dicts."""
        for (m, v, s), writer in writers.items():
            writer.write(step, split, per_member[m][v, seed_index[s]])

    curves = {i: {"train": ([], []), "validation": ([], [])} for i in implementations}
    pending: list = []
    last_train: list[dict[str, np.ndarray]] = []
    final: dict[str, list] = {}
    chunks = _seed_chunks(config, seeds)
    next(chunks)
    bar = tqdm.tqdm(
        total=num_steps,
        desc=config.optimizer.name,
        unit="step",
        disable=None if progress else True,  # None: only on a terminal.
        dynamic_ncols=True,
        mininterval=1.0,
    )
    lengths = _chunks(
        num_steps, (config.train.log_every_steps, config.train.eval_every_steps), _MAX_CHUNK
    )
    try:
        step, batch = 0, chunks.send(lengths[0])
        phases["setup"] = time.perf_counter() - start
        for i, length in enumerate(lengths):
            tick = time.perf_counter()
            if length not in compiled:  # Compilation is not throughput.
                begun = time.perf_counter()
                compiled[length] = scan.lower(carry, batch).compile()
                phases["compile"] += time.perf_counter() - begun
                tick += time.perf_counter() - begun
            carry, logged = compiled[length](carry, batch)  # logged: [K] leading axis
            if i + 1 < len(lengths):  # Drawn on the host while the scan runs.
                batch = chunks.send(lengths[i + 1])
            pending.append(logged)
            step += length
            bar.update(length)
            log = step % config.train.log_every_steps == 0 or step == num_steps
            evaluate = step % config.train.eval_every_steps == 0 or step == num_steps
            if log:
                fetched = jax.device_get(pending)  # [chunks][member]{loss, accuracy} [K, V, S]
                last_train = [
                    {
                        k: np.concatenate([p[m][k] for p in fetched]).mean(axis=0)
                        for k in ("loss", "accuracy")
                    }
                    for m in range(len(implementations))
                ]
                pending = []
            if log or evaluate:
                jax.block_until_ready(carry)
            phases["train"] += time.perf_counter() - tick
            if log:
                for m, impl in enumerate(implementations):
                    curves[impl]["train"][0].append(step)
                    curves[impl]["train"][1].append(last_train[m])
                if writers:
                    write("train", step, [_as_grid(t) for t in last_train])
            if not evaluate:
                continue
            tick = time.perf_counter()
            if "validation" in eval_data:
                result = _evaluate(eval_fn, carry, eval_data["validation"])
                for m, impl in enumerate(implementations):
                    curves[impl]["validation"][0].append(step)
                    curves[impl]["validation"][1].append(_metric_arrays(result[m]))
                write("validation", step, result)
                if step == num_steps:
                    final["validation"] = result
            if step == num_steps:
                final["test"] = _evaluate(eval_fn, carry, eval_data["test"])
                write("test", num_steps, final["test"])
            phases["evaluate"] += time.perf_counter() - tick
    finally:
        bar.close()
        for writer in writers.values():
            writer.close()
    wall = time.perf_counter() - start
    steps_per_sec = num_steps / phases["train"]
    host = jax.device_get(carry)
    rows = []
    for m, impl in enumerate(implementations):
        for v, s in grid:
            i = seed_index[s]
            row: dict[str, Any] = {"optimizer": config.optimizer.name, "implementation": impl}
            row.update({k: sweep[k][v] for k in sweep})
            row.update(seed=s, steps=num_steps)
            row["final_train_loss"] = float(last_train[m]["loss"][v, i])
            row["final_train_accuracy"] = float(last_train[m]["accuracy"][v, i])
            for split in ("validation", "test"):
                result = final[split][m][v, i] if split in final else {}
                for k in ("loss", "accuracy", "f1"):
                    row[f"{split}_{k}"] = float(result.get(k, math.nan))
            row["finite"] = bool(host.finite[v, i, m])
            row["parity"] = float(host.parity[v, i]) if len(implementations) == 2 else math.nan
            row.update(
                steps_per_sec=steps_per_sec,
                wall_time_s=wall,
                runs_in_program=len(grid) * len(implementations),
            )
            rows.append(row)
    return RunsResult(
        rows=rows,
        curves={
            impl: {
                split: (np.asarray(steps), _stack_curve(values))
                for split, (steps, values) in per_split.items()
            }
            for impl, per_split in curves.items()
        },
        params={impl: host.members[m].params for m, impl in enumerate(implementations)},
        num_steps=num_steps,
        steps_per_sec=steps_per_sec,
        wall_time_s=wall,
        phases=phases,
    )


def _as_grid(train_means: dict[str, np.ndarray]) -> np.ndarray:
    """{"loss": [V, S], ...} -> [V, S] object array of {"loss": float, ...}."""
    shape = train_means["loss"].shape
    out = np.empty(shape, object)
    for index in np.ndindex(shape):
        out[index] = {k: float(x[index]) for k, x in train_means.items()}
    return out


def _metric_arrays(grid: np.ndarray) -> dict[str, np.ndarray]:
    """[V, S] object array of metric dicts -> {"loss", "accuracy"}: [V, S] float arrays."""
    return {
        k: np.vectorize(lambda r, k=k: r[k], otypes=[float])(grid) for k in ("loss", "accuracy")
    }


def _stack_curve(values: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """[T] of {"loss": [V, S]} -> {"loss": [V, S, T]}."""
    if not values:
        return {}
    return {k: np.stack([x[k] for x in values], axis=-1) for k in values[0]}
