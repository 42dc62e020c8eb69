"""Data-parallel engines: how the pure steps are compiled and where state and batches live.

Two engines, chosen by `config.train.engine`, that give the same numbers as one device:

- "jit": `jax.jit` over a 1-D device `Mesh` with axis "data". The state is replicated
  (`NamedSharding(mesh, P())`), batches are split along their first axis
  (`NamedSharding(mesh, P("data"))`); XLA inserts the gradient all-reduce and computes BatchNorm
  statistics over the global batch. The modern path (pjit/shard_map are what pmap runs on now).
- "pmap": `jax.pmap` with the state replicated along a leading device axis and batches laid out
  [devices, per_device_batch, ...]; the step averages gradients, metrics and BatchNorm statistics
  with `lax.pmean` over the axis "batch". Kept for the classic Flax-example layout.

Both compile each step once, donate the state, and return metrics as device scalars reduced
across devices (no host transfer; the loop fetches them when it logs). Typical use:

    engine = make_engine(config.train.engine, model, tx, schedule, num_classes)
    validate_batch_size(config.train.batch_size, engine.num_devices)
    state = engine.put_state(create_train_state(key, model, tx, image_shape))
    for batch in train_batches(..., layout=engine.batch_layout):
        state, metrics = engine.train_step(state, engine.put_batch(batch))
    plain = engine.get_state(state)  # host numpy copy: checkpoint, compare

Options (keywords of `make_engine`, defaults = the replicated float32 engines above):

- `shard_optimizer=True`: ZeRO-1 (`adamlab.zero`): each device keeps 1/N of the optimizer state.
  jit: the moments get `NamedSharding(mesh, P(..., "data", ...))` and XLA partitions the update;
  pmap: reduce-scatter of the gradients, update of the local slice, all-gather of the parameters.
  `get_state` returns the full (unsharded) state either way, so checkpoints do not depend on it.
- `policy`: mixed precision (`adamlab.precision.Policy`), e.g. bfloat16 compute on float32
  master parameters.

Multi-host (`jax.distributed`, see `adamlab.distributed`): the jit engine's mesh spans every
device of every process (`jax.devices()`); each process feeds its own slice of the global batch
(`put_batch` assembles the global array with `jax.make_array_from_process_local_data`), places
the state it restored or built identically on every process with `make_array_from_callback`, and
`get_state` gathers sharded leaves from all processes (`process_allgather`). The pmap engine is
single-process here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from adamlab.training import zero
from adamlab.training.precision import Policy
from adamlab.training.steps import make_eval_step, make_train_step
from adamlab.training.train_state import TrainState

ENGINES: tuple[str, ...] = ("jit", "pmap")
PMAP_AXIS = "batch"
MESH_AXIS = "data"


class Engine(Protocol):
    """What the training loop uses; both engines implement it."""

    name: str
    batch_layout: str  # "flat" [B, ...] or "pmap" [devices, B / devices, ...]
    devices: tuple[jax.Device, ...]
    num_devices: int

    def put_state(self, state: TrainState) -> TrainState: ...
    def get_state(self, state: Any) -> TrainState: ...
    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]: ...
    def train_step(self, state: Any, batch: dict) -> tuple[Any, dict[str, jax.Array]]: ...
    def eval_step(self, state: Any, batch: dict) -> dict[str, jax.Array]: ...


def validate_engine_name(name: str) -> None:
    if name not in ENGINES:
        raise ValueError(f"train.engine={name!r} is not an engine; allowed: {', '.join(ENGINES)}")


def validate_batch_size(batch_size: int, num_devices: int, *, what: str = "train.batch_size"):
    """Raises ValueError unless the global batch splits evenly over the devices."""
    if not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"{what}={batch_size!r} must be a positive int")
    if batch_size % num_devices:
        raise ValueError(
            f"{what}={batch_size} is not divisible by the {num_devices} devices; use a multiple "
            f"of {num_devices} (the global batch is split evenly, one shard per device)"
        )


def validate_engine_config(train_config: Any, num_devices: int | None = None) -> None:
    """Checks `train.engine`, `train.batch_size` and `train.eval_batch_size` before training.

    `num_devices` defaults to `jax.device_count()`: all devices of all processes (one process:
    the local devices), over which the global batch is split.
    """
    num_devices = jax.device_count() if num_devices is None else num_devices
    validate_engine_name(train_config.engine)
    validate_batch_size(train_config.batch_size, num_devices, what="train.batch_size")
    validate_batch_size(train_config.eval_batch_size, num_devices, what="train.eval_batch_size")


def _cpu_collectives_need_sync(devices: Sequence[jax.Device]) -> bool:
    """Whether each step must finish before the next is dispatched.

    XLA's CPU runtime runs the per-device programs of several CPU devices (simulated with
    `--xla_force_host_platform_device_count`) on one thread pool. With steps dispatched
    asynchronously ahead of each other and fewer cores than devices, the devices of one step can
    wait forever in the all-reduce rendezvous for a device whose thread is taken by the next step
    (observed with jax 0.10.2 on 2 cores and 4 devices, for jit and pmap alike: XLA aborts after
    40 s). Waiting for each step avoids it and costs little on CPU, which has no accelerator to
    overlap with. GPU/TPU engines, and a single CPU device, stay asynchronous.
    """
    return len(devices) > 1 and devices[0].platform == "cpu"


def _host_copy(tree: Any) -> Any:
    # np.array copies: the result stays valid after the engine donates the device state.
    return jax.tree.map(_host_array, tree)


def _host_array(x: Any) -> np.ndarray:
    """A numpy copy of a (possibly multi-host, sharded) array: the global value."""
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


def _check_leading_dim(batch: dict[str, np.ndarray], num_devices: int, layout: str) -> None:
    """`num_devices`: the devices this process feeds (its local devices)."""
    for key, value in batch.items():
        shape = np.shape(value)
        if layout == "pmap" and (not shape or shape[0] != num_devices):
            raise ValueError(
                f"batch[{key!r}] has shape {shape}; the pmap engine needs layout='pmap', i.e. a "
                f"leading axis of {num_devices} devices"
            )
        if layout == "flat" and (not shape or shape[0] % num_devices):
            raise ValueError(
                f"batch[{key!r}] has shape {shape}; the jit engine needs a leading batch axis "
                f"divisible by {num_devices} devices (this process's; layout='flat')"
            )


class _EngineBase:
    """Shared calls: run the compiled step, waiting for it where CPU collectives need that."""

    def __init__(self, devices: Sequence[jax.Device], synchronous: bool | None):
        self.devices = tuple(devices)
        self.num_devices = len(self.devices)
        if synchronous is None:
            synchronous = _cpu_collectives_need_sync(self.devices)
        self.synchronous = synchronous

    def train_step(self, state: Any, batch: dict) -> tuple[Any, dict[str, jax.Array]]:
        out = self.compiled_train_step(state, batch)
        return jax.block_until_ready(out) if self.synchronous else out

    def eval_step(self, state: Any, batch: dict) -> dict[str, jax.Array]:
        out = self.compiled_eval_step(state, batch)
        return jax.block_until_ready(out) if self.synchronous else out


class JitEngine(_EngineBase):
    """`jax.jit` with the state replicated and the batch sharded over a "data" mesh axis.

    With `shard_optimizer`, the optimizer's moments are sharded over the axis instead (ZeRO-1).
    """

    name = "jit"
    batch_layout = "flat"

    def __init__(
        self, model, tx, schedule, num_classes, devices, synchronous=None, *,
        shard_optimizer=False, policy=None,
    ):  # fmt: skip
        super().__init__(devices, synchronous)
        self.tx, self.shard_optimizer = tx, shard_optimizer
        self.mesh = Mesh(np.array(self.devices), (MESH_AXIS,))
        self.replicated = NamedSharding(self.mesh, P())
        self.data_sharding = NamedSharding(self.mesh, P(MESH_AXIS))
        self.num_local_devices = sum(d.process_index == jax.process_index() for d in self.devices)
        train_step = make_train_step(model, tx, schedule, policy=policy)
        if shard_optimizer:
            # The state's shardings follow from its shapes: constrain the new state at trace
            # time, and let jit take the input shardings `put_state` gave the state.
            self.compiled_train_step = jax.jit(
                self._constrained(train_step),
                in_shardings=(None, self.data_sharding),
                donate_argnums=0,
            )
        else:
            # A single sharding is a pytree prefix: it applies to every leaf of the state / batch.
            self.compiled_train_step = jax.jit(
                train_step,
                in_shardings=(self.replicated, self.data_sharding),
                out_shardings=(self.replicated, self.replicated),
                donate_argnums=0,
            )
        self.compiled_eval_step = jax.jit(
            make_eval_step(model, num_classes, policy=policy),
            in_shardings=(None if shard_optimizer else self.replicated, self.data_sharding),
            out_shardings=self.replicated,
        )

    def state_shardings(self, state: Any) -> Any:
        """Replicated, except the optimizer's moments under `shard_optimizer` (shapes suffice)."""
        shardings = jax.tree.map(lambda _: self.replicated, state)
        if self.shard_optimizer:
            opt = zero.opt_state_shardings(self.tx, state.opt_state, self.mesh, MESH_AXIS)
            shardings = shardings.replace(opt_state=opt)
        return shardings

    def _constrained(self, train_step):
        def step(state, batch):
            state, metrics = train_step(state, batch)
            constrain = jax.lax.with_sharding_constraint
            state = constrain(state, self.state_shardings(state))
            return state, constrain(metrics, self.replicated)

        return step

    def put_state(self, state: TrainState) -> TrainState:
        return _place(state, self.state_shardings(state))

    def get_state(self, state: TrainState) -> TrainState:
        return _host_copy(state)

    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        _check_leading_dim(batch, self.num_local_devices, "flat")
        if jax.process_count() == 1:
            return jax.device_put(dict(batch), self.data_sharding)
        # This process's rows of the global batch (adamlab.data gives each process its slice).
        return {
            k: jax.make_array_from_process_local_data(self.data_sharding, np.asarray(v))
            for k, v in batch.items()
        }


class PmapEngine(_EngineBase):
    """`jax.pmap` over a leading device axis, with `lax.pmean`/`psum` over the axis "batch".

    With `shard_optimizer`, device i keeps slice i of the optimizer state (ZeRO-1): the state's
    moments are laid out [devices, ceil(size / devices)] (`adamlab.zero.shard_leaves`).
    """

    name = "pmap"
    batch_layout = "pmap"

    def __init__(
        self, model, tx, schedule, num_classes, devices, synchronous=None, *,
        shard_optimizer=False, policy=None,
    ):  # fmt: skip
        if jax.process_count() > 1:
            raise ValueError(
                f"train.engine='pmap' runs in one process, but this is one of "
                f"{jax.process_count()} processes; use train.engine='jit' for multi-host runs"
            )
        super().__init__(devices, synchronous)
        self.tx, self.shard_optimizer = tx, shard_optimizer
        # Same layout as pmap's own outputs: leading axis sharded one slice per device.
        self.mesh = Mesh(np.array(self.devices), (PMAP_AXIS,))
        self.data_sharding = NamedSharding(self.mesh, P(PMAP_AXIS))
        # out_axes=None for metrics/sums: they are identical on all devices after pmean/psum,
        # so return one copy instead of a [devices] stack.
        train_step = make_train_step(
            model, tx, schedule, axis_name=PMAP_AXIS, policy=policy,
            shard_optimizer=shard_optimizer, num_shards=self.num_devices,
        )  # fmt: skip
        self.compiled_train_step = jax.pmap(
            train_step,
            axis_name=PMAP_AXIS,
            devices=self.devices,
            donate_argnums=0,
            out_axes=(0, None),
        )
        self.compiled_eval_step = jax.pmap(
            make_eval_step(model, num_classes, axis_name=PMAP_AXIS, policy=policy),
            axis_name=PMAP_AXIS,
            devices=self.devices,
            out_axes=None,
        )

    def put_state(self, state: TrainState) -> TrainState:
        """Every leaf with a leading device axis (a copy per device; under ZeRO-1 the moments
        split instead), laid out one row per device as pmap's own outputs are."""
        n = self.num_devices
        host = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n, *np.shape(x))), state)
        if self.shard_optimizer:
            host = host.replace(opt_state=zero.to_sharded_opt_state(self.tx, state.opt_state, n))
        return jax.device_put(host, self.data_sharding)

    def get_state(self, state: TrainState) -> TrainState:
        first = lambda x: x.addressable_shards[0].data[0]
        if not self.shard_optimizer:
            return _host_copy(jax.tree.map(first, state))
        host = _host_copy(jax.tree.map(first, state.replace(opt_state=None)))
        opt_state = jax.tree.map(np.asarray, state.opt_state)  # [devices, ...]: all slices
        return host.replace(opt_state=zero.from_sharded_opt_state(self.tx, opt_state, host.params))

    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        _check_leading_dim(batch, self.num_devices, "pmap")
        return jax.device_put(dict(batch), self.data_sharding)


def make_engine(
    name: str,
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    num_classes: int,
    *,
    devices: Sequence[jax.Device] | None = None,
    synchronous: bool | None = None,
    shard_optimizer: bool = False,
    policy: Policy | None = None,
) -> Engine:
    """Builds the "jit" or "pmap" engine over `devices` (default: `jax.devices()`, i.e. the
    local devices in one process and every process's devices under `jax.distributed`).

    The engine's `compiled_train_step` / `compiled_eval_step` are the jitted / pmapped
    functions (jit: state and batch sharded by `NamedSharding`; pmap: leading device axis);
    `train_step` / `eval_step` call them. `synchronous` (default: only for several CPU devices,
    see `_cpu_collectives_need_sync`) makes each call wait for its result.
    `shard_optimizer` shards the optimizer state over the devices (ZeRO-1, `adamlab.zero`);
    `policy` sets mixed precision (`adamlab.precision`). Their defaults keep the replicated
    float32 engine.
    """
    validate_engine_name(name)
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices must name at least one device")
    cls = JitEngine if name == "jit" else PmapEngine
    return cls(
        model, tx, schedule, num_classes, devices, synchronous,
        shard_optimizer=shard_optimizer, policy=policy,
    )  # fmt: skip
