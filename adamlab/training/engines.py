"""Data-parallel engines: how the members' step is compiled and where state and batches live.

"jit" (a device `Mesh`) and "pmap" give the same numbers as one device; both train a chunk of
K steps per dispatch. Engines built with the same `program_key` share their jitted programs
(`_share`). docs/internals.md shows their use and describes chunks, diagnostics, the
evaluation point, ZeRO-1 and multi-host.
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
    is_int = isinstance(batch_size, int | np.integer) and not isinstance(batch_size, bool)
    if not is_int or batch_size < 1:
        raise ValueError(f"{what}={batch_size!r} must be a positive int")
    if batch_size % num_devices:
        raise ValueError(
            f"{what}={batch_size} is not divisible by the {num_devices} devices; use a multiple "
            f"of {num_devices} (the global batch is split evenly, one shard per device)"
        )


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
    first `length` rows are trained (the rest is padding, never read). The train program's
    arguments after the members, `*chunk`: the same types in every call, so that its compiled
    program is reused."""

    batches: dict[str, jax.Array]
    length: np.int32


def pad_rows(chunk: dict[str, np.ndarray], capacity: int) -> dict[str, np.ndarray]:
    """A host chunk [K, ...] with zero rows appended up to `capacity` rows, for
    `put_chunk(pad_rows(chunk, capacity), K)`; the chunk itself (no copy) when K = capacity."""
    pad = lambda x: np.concatenate([x, np.zeros((capacity - len(x), *x.shape[1:]), x.dtype)])
    return {k: v if len(v) == capacity else pad(np.asarray(v)) for k, v in chunk.items()}


def _row(batches: dict, i) -> dict:
    """Row `i` (traced) of every [capacity, ...] array."""
    return jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False), batches)


def _set_row(metrics: dict, values: dict, i) -> dict:
    """`metrics` [capacity, ...] with row `i` (traced) set to `values`."""
    put = lambda buffer, value: jax.lax.dynamic_update_index_in_dim(buffer, value, i, 0)
    return jax.tree.map(put, metrics, values)


def _chunk_fn(step, traced: bool, place, logged_step=None):
    """`chunk_fn(members, batches, length)`: `length` calls of `step` over the rows of
    `batches`, metrics [rows, ...], returned through `place(carry, metrics)` (the engine's
    layout). One row calls the step once (no loop).

    More rows run in a loop. `traced`: a `fori_loop` whose trip count is the traced `length`,
    so one program serves every length up to the rows (padding rows never run, their metrics
    stay zero). Otherwise a `lax.scan` over all rows (`length` is then the rows), whose trip
    count XLA knows (a GPU waits at every step of a loop of traced length: docs/internals.md).
    Each iteration is the same step either way.

    `logged_step`: the chunk's last step (row `length - 1`) is that step instead, whose
    per-layer statistics come back as metrics["layers"] (one value each, no leading axis).
    """
    logged = logged_step is not None

    def chunk_fn(carry, batches, length):
        rows = jax.tree.leaves(batches)[0].shape[0]
        last_row = 0 if rows == 1 else length - 1 if traced else rows - 1
        if rows > 1 and traced:
            plain = jax.jit(step)  # traced once: for the metrics' shapes and for the loop's body
            _, shapes = jax.eval_shape(plain, carry, _row(batches, 0))
            metrics = jax.tree.map(lambda s: jnp.zeros((rows, *s.shape), s.dtype), shapes)

            def body(i, state):
                carry, metrics = state
                carry, values = plain(carry, _row(batches, i))
                return carry, _set_row(metrics, values, i)

            count = last_row if logged else length
            carry, metrics = jax.lax.fori_loop(0, count, body, (carry, metrics))
        elif rows > 1:
            head = jax.tree.map(lambda x: x[:-1], batches) if logged else batches
            carry, metrics = jax.lax.scan(step, carry, head)
        if rows > 1 and not logged:
            return place(carry, metrics)
        carry, last = (logged_step or step)(carry, _row(batches, last_row))
        layers = last.pop("layers", None)
        if rows == 1:
            metrics = jax.tree.map(lambda x: x[None], last)
        elif traced:
            metrics = _set_row(metrics, last, last_row)
        else:
            metrics = jax.tree.map(lambda head, x: jnp.concatenate([head, x[None]]), metrics, last)
        return place(carry, metrics if layers is None else dict(metrics, layers=layers))

    return chunk_fn


# Platforms whose devices run a loop of traced length without a host round trip per iteration
# (`_chunk_fn`): their chunks are padded to one capacity and share one program.
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
        # Each call waited for: several CPU devices share one thread pool, where asynchronous
        # calls can deadlock (docs/internals.md).
        self.synchronous = len(self.devices) > 1 and self.devices[0].platform == "cpu"
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
        chunk_fns = {False: _chunk_fn(step, traced, place)}
        if layer_stats is not None:
            chunk_fns[True] = _chunk_fn(step, traced, place, member_step(layer_stats))
        # Evaluation keeps XLA's convolutions, faster in no loop (`adamlab.training.cpu_conv`).
        eval_step = make_eval_step(
            model, num_classes, axis_name=axis, loss=loss, eval_params=eval_params
        )
        grid_eval = members.vectorize(eval_step, self.grid, batch_axis=None)
        evaluate = lambda carry, batch: tuple(grid_eval(s, batch) for s in carry.states)
        options = (name, self.grid, self.devices, shard_optimizer, conv_matmul, loss, traced)
        train_key = ("train", program_key, options, layer_stats is not None)
        pmap_train = dict(in_axes=(0, 0, None), donate_argnums=0, out_axes=(0, None))
        self._train = _share(
            train_key if program_key else None,
            lambda: {
                logged: self._compiled(fn, pmap_train, donate_argnums=0)
                for logged, fn in chunk_fns.items()
            },
        )
        # The evaluation reads the model, its options and the evaluation point alone, whatever
        # the optimizers: Schedule-Free's (x from its state) compiles its own.
        eval_key = ("evaluate", model, num_classes, eval_params, options)
        self._evaluate = _share(
            eval_key,
            lambda: self._compiled(evaluate, dict(out_axes=None), out_shardings=self.replicated),
        )
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
        self._batch_stats = _share(stats_key, lambda: self._compiled(stats, {}))

    def _compiled(self, fn, pmap_options: dict, **jit_options):
        """`fn` pmapped over the devices (with `pmap_options`), or jitted (`jit_options`)."""
        if self.pmap:
            return jax.pmap(fn, axis_name=PMAP_AXIS, devices=self.devices, **pmap_options)
        return jax.jit(fn, **jit_options)

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
        return DeviceChunk(self._put(chunk, 2 if self.grid else 1), np.int32(length))

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
        return self._finished(self._train_program(layer_stats)(carry, *chunk))

    def compile_train(self, carry: Any, chunk: DeviceChunk, *, layer_stats: bool = False) -> None:
        """Compiles the train program for `chunk`'s shapes (its capacity, not its length)
        without running it; the next `train` call with such a chunk reuses it (jax's
        compilation cache). The loop calls it before the first call, so that compiling is timed
        apart from the steps."""
        self._train_program(layer_stats).lower(carry, *chunk).compile()

    def _train_program(self, layer_stats: bool):
        """The jitted (or pmapped) chunk function, with or without per-layer statistics."""
        if layer_stats and True not in self._train:
            raise ValueError("this engine was built without layer_stats")
        return self._train[layer_stats]

    def evaluate(self, carry: Any, batch: dict) -> tuple[dict[str, jax.Array], ...]:
        """Per implementation, the eval sums of every member (`steps.make_eval_step`)."""
        return self._finished(self._evaluate(carry, batch))

    def recompute_batch_stats(self, carry: Any, batches: Sequence[dict]) -> Any:
        """A copy of the members whose BatchNorm statistics ran over `batches` (device
        batches, `put_batch`) in train mode at the evaluation point
        (`steps.make_batch_stats_step`): for evaluating them, not for training on (`carry` is
        neither donated nor changed)."""
        for batch in batches:
            carry = self._batch_stats(carry, batch)
        return self._finished(carry)

    def _finished(self, out: Any) -> Any:
        """`out`, waited for where calls must not overlap (`synchronous`)."""
        return jax.block_until_ready(out) if self.synchronous else out


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
