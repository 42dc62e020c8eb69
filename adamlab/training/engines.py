"""Data-parallel engines: how the members' step is compiled and where state and batches live.

    engine = make_engine(config.train.engine, model, txs, schedule, num_classes, grid=())
    members = engine.put_members(initial_members(...))
    members, metrics = engine.train(members, engine.put_chunk(chunk))   # chunk [K, (S,) B, ...]
    sums = engine.evaluate(members, engine.put_batch(batch))          # per implementation
    members = engine.recompute_batch_stats(members, [engine.put_batch(b) for b in batches])
    host = engine.get_members(members)  # numpy copy: checkpoint, report

"jit" (a device `Mesh`) and "pmap" give the same numbers as one device; both train a chunk of
K steps per dispatch. docs/internals.md describes chunks, diagnostics, ZeRO-1 and multi-host.
Engines built with the same `program_key` share their jitted programs (`_share`).
`eval_params` is the optimizer's evaluation point (`Entry.eval_params`, Schedule-Free's
average x; None: the params), where `evaluate` and `recompute_batch_stats` take the model.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from adamlab.training import cpu_conv, members, zero
from adamlab.training.steps import make_batch_stats_step, make_eval_step, make_train_step

ENGINES: tuple[str, ...] = ("jit", "pmap")
PMAP_AXIS = "batch"
MESH_AXIS = "data"


def validate_engine_name(name: str) -> None:
    if name not in ENGINES:
        raise ValueError(f"train.engine={name!r} is not an engine; allowed: {', '.join(ENGINES)}")


def validate_batch_size(batch_size: int, num_devices: int, *, what: str = "train.batch_size"):
    """Raises ValueError unless the global batch splits evenly over the devices."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise ValueError(f"{what}={batch_size!r} must be a positive int")
    if batch_size < 1:
        raise ValueError(f"{what}={batch_size!r} must be a positive int")
    if batch_size % num_devices:
        raise ValueError(
            f"{what}={batch_size} is not divisible by the {num_devices} devices; use a multiple "
            f"of {num_devices} (the global batch is split evenly, one shard per device)"
        )


def _cpu_collectives_need_sync(devices: Sequence[jax.Device]) -> bool:
    """Whether each call must finish before the next is dispatched.

    XLA's CPU runtime runs the per-device programs of several CPU devices (simulated with
    `--xla_force_host_platform_device_count`) on one thread pool. With calls dispatched
    asynchronously ahead of each other and fewer cores than devices, the devices of one call can
    wait forever in the all-reduce rendezvous for a device whose thread is taken by the next one
    (observed with jax 0.10.2 on 2 cores and 4 devices, for jit and pmap alike: XLA aborts after
    40 s). Waiting for each call avoids it and costs little on CPU, which has no accelerator to
    overlap with. GPU/TPU engines, and a single CPU device, stay asynchronous.
    """
    return len(devices) > 1 and devices[0].platform == "cpu"


def _host_array(x: Any) -> np.ndarray:
    """A numpy copy of a (possibly multi-host, sharded) array: the global value. A copy, so it
    stays valid after the engine donates the device buffers."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        return np.array(multihost_utils.process_allgather(x, tiled=True))
    return np.array(x)


def _place(tree: Any, shardings: Any) -> Any:
    """Host arrays (the same on every process) -> global arrays with the given shardings.

    One process: `jax.device_put`. Several: every process builds its addressable shards from its
    own copy (`make_array_from_callback`), so nothing is sent between processes.
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def one(x, sharding):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(one, tree, shardings)


class DeviceChunk(NamedTuple):
    """Training batches placed for one call: `batches` [capacity, (S,) B, ...], of which the
    first `length` rows are trained (the rest is padding, never read)."""

    batches: dict[str, jax.Array]
    length: int


def pad_rows(chunk: dict[str, np.ndarray], capacity: int) -> dict[str, np.ndarray]:
    """A host chunk [K, ...] with zero rows appended up to `capacity` rows, for
    `put_chunk(pad_rows(chunk, capacity), K)`; the chunk itself (no copy) when K = capacity."""
    pad = lambda x: np.concatenate([x, np.zeros((capacity - len(x), *x.shape[1:]), x.dtype)])
    return {k: v if len(v) == capacity else pad(np.asarray(v)) for k, v in chunk.items()}


def _program_args(chunk: DeviceChunk) -> tuple[dict, np.int32]:
    """The train program's arguments after the members, as `train` passes them and
    `compile_train` compiles for them (the same types, so the compiled program is reused)."""
    return chunk.batches, np.int32(chunk.length)


def _row(batches: dict, i) -> dict:
    """Row `i` (traced) of every [capacity, ...] array."""
    return jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False), batches)


def _set_row(metrics: dict, values: dict, i) -> dict:
    """`metrics` [capacity, ...] with row `i` (traced) set to `values`."""
    put = lambda buffer, value: jax.lax.dynamic_update_index_in_dim(buffer, value, i, 0)
    return jax.tree.map(put, metrics, values)


def _steps(step, carry, batches: dict, length, traced: bool) -> tuple[Any, dict]:
    """`step` over rows 0..length-1 of `batches`: (carry, metrics [rows, ...]).

    `traced`: a `fori_loop` whose trip count is the traced `length`, so one program serves
    every length up to the rows (padding rows never run, their metrics stay zero); a run whose
    log, eval and checkpoint points leave gaps of many lengths compiles once. Otherwise a
    `lax.scan` over all rows (`length` is then the rows), whose trip count XLA knows: on a GPU
    a loop of traced length copies its condition to the host and waits for the device at every
    step (XLA's WhileThunk), which a known trip count does not. Each iteration is the same step
    either way (a scan is the same while loop with a constant count).
    """
    if not traced:
        return jax.lax.scan(step, carry, batches)
    capacity = jax.tree.leaves(batches)[0].shape[0]
    step = jax.jit(step)  # traced once: for the metrics' shapes here and for the loop's body
    _, shapes = jax.eval_shape(step, carry, _row(batches, 0))
    metrics = jax.tree.map(lambda s: jnp.zeros((capacity, *s.shape), s.dtype), shapes)

    def body(i, state):
        carry, metrics = state
        carry, values = step(carry, _row(batches, i))
        return carry, _set_row(metrics, values, i)

    return jax.lax.fori_loop(0, length, body, (carry, metrics))


def _run_chunk(step, traced: bool, place):
    """`chunk_fn(members, batches, length)`: `length` calls of `step`, metrics [rows, ...],
    returned through `place(carry, metrics)` (the engine's layout).

    One row calls `step` once (no loop); more run `_steps`.
    """

    def chunk_fn(carry, batches, length):
        if jax.tree.leaves(batches)[0].shape[0] == 1:
            carry, metrics = step(carry, _row(batches, 0))
            return place(carry, jax.tree.map(lambda x: x[None], metrics))
        return place(*_steps(step, carry, batches, length, traced))

    return chunk_fn


def _run_chunk_logging_last(step, logged_step, traced: bool, place):
    """Like `_run_chunk(step, traced, place)`, but the chunk's last step (row `length - 1`) is
    `logged_step`, whose per-layer statistics come back as metrics["layers"] (one value each,
    no leading axis)."""

    def chunk_fn(carry, batches, length):
        rows = jax.tree.leaves(batches)[0].shape[0]
        last_row = length - 1 if traced else rows - 1
        if rows > 1:
            head = batches if traced else jax.tree.map(lambda x: x[:-1], batches)
            carry, metrics = _steps(step, carry, head, last_row, traced)
        carry, last = logged_step(carry, _row(batches, last_row))
        layers = last.pop("layers")
        if rows == 1:
            return place(carry, dict(jax.tree.map(lambda x: x[None], last), layers=layers))
        if traced:
            return place(carry, dict(_set_row(metrics, last, last_row), layers=layers))
        stacked = lambda head, x: jnp.concatenate([head, x[None]])
        return place(carry, dict(jax.tree.map(stacked, metrics, last), layers=layers))

    return chunk_fn


# Platforms whose devices run a loop of traced length without a host round trip per iteration
# (`_steps`): their chunks are padded to one capacity and share one program.
PADDED_CHUNK_PLATFORMS = ("cpu", "tpu")


class Engine:
    """The jit or pmap engine over `devices` for a grid of members (see the module docstring)."""

    def __init__(
        self,
        name: str,
        model: nn.Module,
        txs: Sequence[optax.GradientTransformation],
        schedule: optax.Schedule,
        num_classes: int,
        *,
        grid: tuple[int, ...] = (),
        devices: Sequence[jax.Device] | None = None,
        synchronous: bool | None = None,
        shard_optimizer: bool = False,
        conv_matmul: bool = False,
        loss: str = "cross_entropy",
        layer_stats: Sequence[Any] | None = None,
        padded_chunks: bool | None = None,
        eval_params: Any = None,
        program_key: Hashable | None = None,
    ):
        """`program_key`: what determines the train programs besides the arguments here that
        `_share` reads (the model, the optimizers and schedule, their options), so that two
        engines with equal keys compile equal train programs; None shares none.
        `eval_params`: the optimizer's evaluation point (`steps.evaluation_params`)."""
        validate_engine_name(name)
        self.eval_params = eval_params
        self.name, self.grid, self.txs = name, tuple(grid), tuple(txs)
        self.devices = tuple(jax.devices() if devices is None else devices)
        if not self.devices:
            raise ValueError("devices must name at least one device")
        self.num_devices = len(self.devices)
        if synchronous is None:
            synchronous = _cpu_collectives_need_sync(self.devices)
        self.synchronous = synchronous
        if padded_chunks is None:
            padded_chunks = self.devices[0].platform in PADDED_CHUNK_PLATFORMS
        self.padded_chunks = padded_chunks
        if shard_optimizer and self.grid:
            raise ValueError(
                "train.shard_optimizer=True (ZeRO-1) shards a single run's optimizer state; "
                f"this run trains a grid of {self.grid} members: set it to False"
            )
        if name == "pmap" and jax.process_count() > 1:
            raise ValueError(
                f"train.engine='pmap' runs in one process, but this is one of "
                f"{jax.process_count()} processes; use train.engine='jit' for multi-host runs"
            )
        self.shard_optimizer = shard_optimizer
        self.pmap = name == "pmap"
        axis = PMAP_AXIS if self.pmap else None
        self.mesh = Mesh(np.array(self.devices), (PMAP_AXIS if self.pmap else MESH_AXIS,))
        self.replicated = NamedSharding(self.mesh, P())
        self.num_local_devices = sum(d.process_index == jax.process_index() for d in self.devices)
        pmap_zero = shard_optimizer and self.pmap

        def member_step(stats):
            train_steps = [
                cpu_conv.intercepted(
                    make_train_step(
                        model,
                        tx,
                        schedule,
                        axis_name=axis,
                        shard_optimizer=pmap_zero,
                        num_shards=self.num_devices if pmap_zero else None,
                        loss=loss,
                        diagnostics=diagnostics,
                    ),
                    conv_matmul,
                )
                for tx, diagnostics in zip(self.txs, stats, strict=True)
            ]
            return members.vectorize(members.make_member_step(train_steps), self.grid)

        step = member_step([None] * len(self.txs))
        traced = self.padded_chunks
        place = (lambda *out: out) if self.pmap else self._constrain
        chunk_fns = {False: _run_chunk(step, traced, place)}
        if layer_stats is not None:
            logged = member_step(layer_stats)
            chunk_fns[True] = _run_chunk_logging_last(step, logged, traced, place)
        # Evaluation keeps XLA's convolutions: it runs in no loop, and vmapped over members
        # they are not expanded either; on the 2-core CPU the MNIST CNN's eval batch of 1000
        # takes 0.30-0.57x of its time with `conv_matmul` (1 to 16 members,
        # benchmarks/eval_convolutions.py).
        eval_step = make_eval_step(
            model, num_classes, axis_name=axis, loss=loss, eval_params=eval_params
        )
        grid_eval = members.vectorize(eval_step, self.grid, batch_axis=None)
        evaluate = lambda carry, batch: tuple(grid_eval(s, batch) for s in carry.states)
        options = (name, self.grid, self.devices, shard_optimizer, conv_matmul, loss, traced)
        self._train = _share(
            ("train", program_key, options, layer_stats is not None) if program_key else None,
            lambda: self._jitted_train(chunk_fns),
        )
        # The evaluation reads the model, its options and the evaluation point alone, whatever
        # the optimizers: Schedule-Free's (x from its state) compiles its own.
        eval_key = ("evaluate", model, num_classes, eval_params, options)
        self._evaluate = _share(eval_key, lambda: self._jitted_evaluate(evaluate))
        stats_step = members.vectorize(
            make_batch_stats_step(model, eval_params, axis_name=axis), self.grid, batch_axis=None
        )

        def stats(carry, batch):
            carry = carry.replace(states=tuple(stats_step(s, batch) for s in carry.states))
            return carry if self.pmap else self._constrain(carry, {})[0]

        # Its output keeps the members' layout, which ZeRO-1 takes from the optimizers: keyed as
        # the train programs (only where there is an evaluation point: else never called).
        shared = program_key and eval_params
        stats_key = ("batch_stats", program_key, eval_params, options) if shared else None
        self._batch_stats = _share(stats_key, lambda: self._jitted_batch_stats(stats))

    def _jitted_train(self, chunk_fns: dict) -> dict:
        """{layer_stats: the jitted (or pmapped) chunk function}."""
        if self.pmap:
            return {
                logged: jax.pmap(
                    fn,
                    axis_name=PMAP_AXIS,
                    devices=self.devices,
                    in_axes=(0, 0, None),
                    donate_argnums=0,
                    out_axes=(0, None),
                )
                for logged, fn in chunk_fns.items()
            }
        return {logged: jax.jit(fn, donate_argnums=0) for logged, fn in chunk_fns.items()}

    def _jitted_evaluate(self, evaluate):
        if self.pmap:
            return jax.pmap(evaluate, axis_name=PMAP_AXIS, devices=self.devices, out_axes=None)
        return jax.jit(evaluate, out_shardings=self.replicated)

    def _jitted_batch_stats(self, stats):
        if self.pmap:
            return jax.pmap(stats, axis_name=PMAP_AXIS, devices=self.devices)
        return jax.jit(stats)

    # ------------------------------------------------------------------------ state

    def member_shardings(self, carry: Any) -> Any:
        """jit: replicated, except the moments under ZeRO-1 (shapes suffice)."""
        shardings = jax.tree.map(lambda _: self.replicated, carry)
        if not self.shard_optimizer:
            return shardings
        states = tuple(
            s.replace(opt_state=zero.opt_state_shardings(tx, st.opt_state, self.mesh, MESH_AXIS))
            for tx, s, st in zip(self.txs, shardings.states, carry.states, strict=True)
        )
        return shardings.replace(states=states)

    def _constrain(self, carry, metrics):
        """jit: a chunk's outputs in the members' layout, its metrics replicated."""
        constrain = jax.lax.with_sharding_constraint
        return constrain(carry, self.member_shardings(carry)), constrain(metrics, self.replicated)

    def put_members(self, carry: members.Members) -> members.Members:
        """Host members -> device members in this engine's layout."""
        if not self.pmap:
            return _place(carry, self.member_shardings(carry))
        n = self.num_devices
        host = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n, *np.shape(x))), carry)
        if self.shard_optimizer:
            states = tuple(
                s.replace(opt_state=zero.to_sharded_opt_state(tx, full.opt_state, n))
                for tx, s, full in zip(self.txs, host.states, carry.states, strict=True)
            )
            host = host.replace(states=states)
        return jax.device_put(host, NamedSharding(self.mesh, P(PMAP_AXIS)))

    def get_members(self, carry: members.Members) -> members.Members:
        """Device members -> a host (numpy) copy of the full, unsharded members."""
        if not self.pmap:
            return jax.tree.map(_host_array, carry)
        first = lambda x: np.array(x.addressable_shards[0].data[0])
        if not self.shard_optimizer:
            return jax.tree.map(first, carry)
        host = jax.tree.map(
            first, carry.replace(states=tuple(s.replace(opt_state=None) for s in carry.states))
        )
        states = tuple(
            h.replace(
                opt_state=zero.from_sharded_opt_state(
                    tx, jax.tree.map(np.asarray, s.opt_state), h.params
                )
            )
            for tx, h, s in zip(self.txs, host.states, carry.states, strict=True)
        )
        return host.replace(states=states)

    # ------------------------------------------------------------------------ batches

    def _put(self, batch: dict[str, np.ndarray], lead: int) -> dict[str, jax.Array]:
        """Places a host batch whose batch axis is `lead` (leading axes before it: K, seeds)."""
        for key, value in batch.items():
            shape = np.shape(value)
            if len(shape) <= lead or shape[lead] % self.num_local_devices:
                raise ValueError(
                    f"batch[{key!r}] has shape {shape}; axis {lead} (the batch) must be "
                    f"divisible by this process's {self.num_local_devices} devices"
                )
        if self.pmap:
            n = self.num_devices

            def split(x):  # [..., B, ...] -> [devices, ..., B / devices, ...]
                x = np.asarray(x)
                x = x.reshape(*x.shape[:lead], n, x.shape[lead] // n, *x.shape[lead + 1 :])
                return np.moveaxis(x, lead, 0)

            host = {k: split(v) for k, v in batch.items()}
            return jax.device_put(host, NamedSharding(self.mesh, P(PMAP_AXIS)))
        sharding = NamedSharding(self.mesh, P(*([None] * lead), MESH_AXIS))
        if jax.process_count() == 1:
            return jax.device_put(dict(batch), sharding)
        # This process's rows of the global batch (adamlab.data gives each process its slice).
        return {
            k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items()
        }

    def put_chunk(self, chunk: dict[str, np.ndarray], length: int | None = None) -> DeviceChunk:
        """A chunk of training batches, [rows, B, ...] (grid ()) or [rows, seeds, B, ...], whose
        first `length` rows (default: all) are trained by the next `train` call. An engine with
        `padded_chunks` takes chunks padded to one capacity (one compiled program for every
        length); one without takes exactly `length` rows (one program per length)."""
        rows = np.shape(next(iter(chunk.values())))[0] if chunk else 0
        length = rows if length is None else length
        if not 1 <= length <= rows:
            raise ValueError(f"length must be in [1, {rows}] (the chunk's rows), got {length}")
        if length < rows and not self.padded_chunks:
            raise ValueError(
                f"this engine ({self.devices[0].platform}) runs a chunk's steps as a scan over "
                f"all its rows: give it exactly length={length} rows, not {rows} "
                "(engine.padded_chunks is False)"
            )
        return DeviceChunk(self._put(chunk, 2 if self.grid else 1), length)

    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """An evaluation batch [B, ...], shared by every member."""
        return self._put(batch, 0)

    # ------------------------------------------------------------------------ steps

    def train(
        self, carry: Any, chunk: DeviceChunk, *, layer_stats: bool = False
    ) -> tuple[Any, dict[str, jax.Array]]:
        """`chunk.length` steps of every member; metrics [capacity, *grid, implementations] per
        LOGGED key, of which the first `chunk.length` rows are those steps' (the rest zero).

        `layer_stats=True` (an engine built with `layer_stats`): the last step's per-layer
        statistics too, metrics["layers"]: per implementation {name: [*grid]}.
        """
        out = self._train_program(layer_stats)(carry, *_program_args(chunk))
        return jax.block_until_ready(out) if self.synchronous else out

    def compile_train(self, carry: Any, chunk: DeviceChunk, *, layer_stats: bool = False) -> None:
        """Compiles the train program for `chunk`'s shapes (its capacity, not its length)
        without running it; the next `train` call with such a chunk reuses it (jax's
        compilation cache). The loop calls it before the first call, so that compiling is timed
        apart from the steps."""
        self._train_program(layer_stats).lower(carry, *_program_args(chunk)).compile()

    def _train_program(self, layer_stats: bool):
        """The jitted (or pmapped) chunk function, with or without per-layer statistics."""
        if layer_stats and True not in self._train:
            raise ValueError("this engine was built without layer_stats")
        return self._train[layer_stats]

    def evaluate(self, carry: Any, batch: dict) -> tuple[dict[str, jax.Array], ...]:
        """Per implementation, the eval sums of every member (`steps.make_eval_step`)."""
        out = self._evaluate(carry, batch)
        return jax.block_until_ready(out) if self.synchronous else out

    def recompute_batch_stats(self, carry: Any, batches: Sequence[dict]) -> Any:
        """A copy of the members whose BatchNorm statistics ran over `batches` (device
        batches, `put_batch`) in train mode at the evaluation point
        (`steps.make_batch_stats_step`): for evaluating them, not for training on (`carry` is
        neither donated nor changed)."""
        for batch in batches:
            carry = self._batch_stats(carry, batch)
        return jax.block_until_ready(carry) if self.synchronous else carry


# The jitted programs of the engines built last, by key (`_share`): few, since each holds its
# compiled executables.
_SHARED: collections.OrderedDict = collections.OrderedDict()
_MAX_SHARED = 8


def _share(key: Hashable | None, build: Any) -> Any:
    """`build()`, or what it returned for an equal `key` before in this process (None: always
    `build()`). jax caches a program's compilations on the jitted function: the same function
    for equal programs traces and compiles each input shape once per process. A key that
    cannot be hashed (a model with an unhashable field) shares nothing."""
    try:
        hash(key)
    except TypeError:
        key = None
    if key is None:
        return build()
    if key not in _SHARED:
        _SHARED[key] = build()
        if len(_SHARED) > _MAX_SHARED:
            _SHARED.popitem(last=False)
    _SHARED.move_to_end(key)
    return _SHARED[key]


def make_engine(name: str, model, txs, schedule, num_classes, **options) -> Engine:
    """`Engine(name, model, txs, schedule, num_classes, **options)`; see `Engine`."""
    return Engine(name, model, txs, schedule, num_classes, **options)
