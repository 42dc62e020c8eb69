"""Golden trajectories of the PyTorch references: `torch.optim`, the ground truth of the
"pytorch" convention (issue 12), and the authors' or the standard PyTorch implementation of
the optimizers torch.optim lacks (timm, pytorch-optimizer, adam-mini, schedulefree).

    python benchmarks/golden_torch.py --problems   # JAX (the adamlab env): the gradients
    pip install -e '.[torch]'
    python benchmarks/golden_torch.py [--out tests/fixtures] [--only NAME ...]   # torch

writes `torch_problems.npz` (four problems: initial parameters and a fixed sequence of 500
float32 gradients each; `--problems` adds the missing ones, which needs JAX, not torch, and
leaves those already there as they are) and one `torch_<name>.npz` per optimizer (its
trajectory on the problems of its `Reference`). `tests/test_optim_torch.py` replays the same
gradients through ours, in the reference's `convention`, and compares, so that the default
test suite needs no torch; with torch installed the same test also runs torch live.

The gradient sequences are fixed (they do not depend on the parameters), so only the
optimizer differs between the two sides:

  * "pytree": five leaves shaped like a small CNN's (62 values) with numpy gradients from
    seed 0: a drift plus noise whose scale falls 10x over the run (so v_t shrinks and
    AMSGrad's running maximum matters), 1% tenfold spikes, a bias whose gradient is exactly
    zero for 100 steps and then tiny (1e-5, so eps is not negligible), and a scalar whose
    gradient is always exactly zero;
  * "cnn": the digits CNN of configs/digits.py (conv 32, conv 64, dense 128, 10 classes) on
    scikit-learn's digits, batch 64, trained 500 steps by optax.adam(3e-3); the gradients of
    94 coordinates, 12 drawn from each of its 8 parameter arrays (the 10 of the output
    bias), are recorded at every step.
    The Adam family updates every coordinate on its own, so a coordinate sees the same
    sequence of updates as in the whole network;
  * "cnn_whole": whole tensors, for the optimizers that couple the coordinates of a tensor
    (LAMB's trust ratio, Muon's orthogonalisation, Cautious's mask mean, MARS's clip of
    c_t to norm 1, Adam-mini's block means): the digits CNN
    shrunk to conv 2, conv 2, dense 4, 10 classes (144 values in 8 arrays), trained and
    recorded as "cnn", every value of every array at every step;
  * "near_square": whole tensors for SOAP, which rotates a tensor by the eigenbases of its
    statistics: a wide (8 x 9) and a tall (9 x 8) matrix, a conv kernel (3x3x2x4, four
    rotated axes), a 6 x 7 matrix of tiny gradients (1e-6: where eps sits in the bias
    correction shows), a bias and a scalar (Adam), standard normal gradients from seed 7.
    Every matrix's sides differ by at most one: the first statistic G G^T (rank min(m, n))
    then has no repeated eigenvalue, where a repeated one leaves eigh's basis arbitrary and
    the trajectories apart. Its gradients are regenerated from NumPy's stream, not stored
    (`REGENERATED`; each leaf's stored sum checks the stream).

A `Reference` says which problems an optimizer runs: the per-coordinate ones run "pytree" and
"cnn" (`PER_COORDINATE`), the coupled ones "pytree" (whole leaves already) and "cnn_whole"
(`WHOLE_TENSOR`), SOAP "near_square" (`NEAR_SQUARE`).

Stored trajectories: the parameters after steps 1-10 and every 20th step to 500 (where the
conventions differ most early on: bias corrections, RAdam's threshold); every state leaf that
has a counterpart in ours after steps 1, 5, 6, 10, 100, 250 and 500:

    torch.optim state           ours (first element of the chain's state)
    exp_avg                     mu
    exp_avg_sq                  nu
    max_exp_avg_sq (amsgrad)    nu_max   (the maximum of the raw v_t, convention "pytorch")
    exp_inf (Adamax)            nu
    mu_product (NAdam)          mu_product
    step                        count    (compared implicitly: both count every update)

timm's and pytorch-optimizer's optimizers name their state as torch.optim does; a `Reference`
with another mapping says so (AdEMAMix: exp_avg -> m1, exp_avg_slow -> m2; Adam-mini: m ->
mu, and v or vmean -> nu, by the kind of block: stored under the first parameter's name;
Schedule-Free: z -> z, exp_avg_sq -> its base's nu), one with none (Muon, whose state ours
nests in optax.partition's) stores the parameters only. Schedule-Free AdamW is the authors'
`schedulefree.AdamWScheduleFree`, in train mode throughout (its params are y).

About 1 MB in all. On the CPU the problems take ~30 s (the CNNs' gradients), the trajectories
~1 minute.
"""

import argparse
import contextlib
import importlib
import importlib.metadata
import inspect
import json
import pathlib
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

NUM_STEPS = 500
PARAM_STEPS = np.array([*range(1, 11), *range(20, NUM_STEPS + 1, 20)])
STATE_STEPS = np.array([1, 5, 6, 10, 100, 250, 500])
PYTREE_SHAPES = {
    "conv_bias": (4,),
    "conv_kernel": (3, 3, 1, 4),
    "dense_bias": (3,),
    "dense_kernel": (6, 3),
    "scale": (),
}  # in jax.tree order (sorted keys): the order of the flattened vectors below
CNN_COORDS_PER_ARRAY = 12
CNN_WHOLE = {"features": (2, 2), "dense_features": 4}  # the digits CNN, shrunk: 144 values
NEAR_SQUARE_SHAPES = {
    "bias": (8,),
    "conv": (3, 3, 2, 4),
    "scale": (),
    "tall": (9, 8),
    "tiny": (6, 7),
    "wide": (8, 9),
}  # in jax.tree order: every matrix's sides differ by at most one
PER_COORDINATE = ("pytree", "cnn")
WHOLE_TENSOR = ("pytree", "cnn_whole")
NEAR_SQUARE = ("near_square",)  # SOAP's: eigenbases that are unique (`near_square_problem`)
LEARNING_RATE = {"pytree": 1e-2, "cnn": 3e-3, "cnn_whole": 3e-3, "near_square": 1e-2}
# torch state name -> ours (field of the rescaling transform's state).
STATE_NAMES = {
    "exp_avg": "mu",
    "exp_avg_sq": "nu",
    "max_exp_avg_sq": "nu_max",
    "exp_inf": "nu",
    "mu_product": "mu_product",
}


class Reference(NamedTuple):
    """An optimizer's PyTorch reference and how ours replays it.

    Attributes:
      optimizer: a `torch.optim` class name ("Adam") or a dotted path ("timm.optim.Lion").
      kwargs: its keyword arguments besides ``lr`` (``foreach=False``, the single-tensor loop,
        is added where it takes one).
      ours: our constructor's hyperparameters besides ``learning_rate``.
      convention: ours' convention that follows the reference.
      problems: the problems it runs: `PER_COORDINATE`, `WHOLE_TENSOR` for an optimizer
        that couples the coordinates of a tensor, `NEAR_SQUARE` for one that rotates them
        (SOAP's eigenbases).
      state: reference state name -> ours' field; None: `STATE_NAMES`; {}: params only.
      learning_rate: problem -> learning rate; None: `LEARNING_RATE`.
      matrices: only the leaves of rank >= 2 (Muon; `matrix_problem`), in `torch_layout`.
      torch_layout: each leaf of rank >= 2 as the reference's 2-D (fan_out, fan_in) parameter,
        the transpose of the (fan_in, fan_out) matrix of our `transform.conv_dimension_numbers`
        (a torch model's layout: Adam-mini's one v per row is ours' per output unit); the
        snapshots are in ours' layout again.
      float32: the reference's bfloat16 casts run in float32 (`_float32_casts`):
        torch.optim.Muon's Newton-Schulz, which ours computes in float32.
      make: ``make(factory, params, lr, kwargs)`` builds the reference where it is not
        ``factory(params, lr=lr, **kwargs)`` (Adam-mini's named parameters); None: that call.
    """

    optimizer: str
    kwargs: dict
    ours: dict
    convention: str = "pytorch"
    problems: tuple[str, ...] = PER_COORDINATE
    state: dict | None = None
    learning_rate: dict | None = None
    matrices: bool = False
    float32: bool = False
    torch_layout: bool = False
    make: Callable | None = None


def _schedule_free_in_train_mode(factory, params, lr, kwargs):
    """The authors' ``AdamWScheduleFree`` in train mode throughout: its params are y, the
    gradient point, as ours' are (x is formed for evaluation only)."""
    opt = factory(params, lr=lr, **kwargs)
    opt.train()
    return opt


def _adam_mini_with_our_blocks(factory, params, lr, kwargs):
    """The authors' ``Adam_mini`` on `params` (torch layout), named so that it computes ours'
    partition: it partitions by name, one v per row of an ``mlp`` weight (ours' per output
    unit) and Adam for a ``bias`` (ours' for ndim <= 1). Its name rule exempts biases from
    the decay: every group decays by ``kwargs["weight_decay"]``, as ours does without a mask.
    """
    names = [f"mlp.{i}.weight" if p.ndim >= 2 else f"{i}.bias" for i, p in enumerate(params)]
    opt = factory(list(zip(names, params, strict=True)), lr=lr, verbose=False, **kwargs)
    for group in opt.param_groups:
        group["weight_decay"] = kwargs["weight_decay"]
    return opt


# Decoupled decay 1e-2 (torch.optim.AdamW's default) is set explicitly on both sides.
_DECAY = {"weight_decay": 1e-2}
# Cautious: timm rescales the mask by 1/max(mean, 1e-3), ours (Liang et al.) by
# 1/(mean + caution_eps). With at most 1000 values per tensor a nonzero mean is >= 1e-3, and
# in float32 mean + 1e-12 == mean: the two agree.
_CAUTION = {"caution_eps": 1e-12}
_SIGN_LR = {"pytree": 1e-3, "cnn": 3e-4, "cnn_whole": 3e-4}  # Lion's: 3-10x below Adam's
OPTIMIZERS = {
    "adam": Reference("Adam", {}, {}),
    "adamw": Reference("AdamW", _DECAY, _DECAY),
    "amsgrad": Reference("Adam", {"amsgrad": True}, {}),
    "nadam": Reference("NAdam", {}, {}),
    "nadamw": Reference("NAdam", {**_DECAY, "decoupled_weight_decay": True}, _DECAY),
    "radam": Reference("RAdam", {}, {}),
    "radamw": Reference("RAdam", {**_DECAY, "decoupled_weight_decay": True}, _DECAY),
    "adamax": Reference("Adamax", {}, {}),
    # The newer optimizers (torch.optim has Muon only): the authors' code where a library
    # ships it (timm's Adopt is Taniguchi et al.'s), else the standard PyTorch one. Where
    # their conventions differ from ours, the settings where they agree (docs/conventions.md).
    "lion": Reference("timm.optim.Lion", _DECAY, _DECAY, "optax", learning_rate=_SIGN_LR),
    "cautious_lion": Reference(
        "timm.optim.Lion",
        {**_DECAY, "caution": True},
        {**_DECAY, **_CAUTION},
        "optax",
        WHOLE_TENSOR,
        learning_rate=_SIGN_LR,
    ),
    "cautious_adamw": Reference(
        "timm.optim.AdamWLegacy",
        {**_DECAY, "caution": True},
        {**_DECAY, **_CAUTION},
        "pytorch",
        WHOLE_TENSOR,
    ),
    "lamb": Reference(
        "timm.optim.Lamb",
        {**_DECAY, "max_grad_norm": None, "always_adapt": True},
        _DECAY,
        "paper",
        WHOLE_TENSOR,
    ),
    "muon": Reference(
        "Muon",
        {**_DECAY, "momentum": 0.95, "nesterov": True, "eps": 1e-7},
        {**_DECAY, "beta": 0.95, "nesterov": True, "eps": 1e-7},
        "paper",
        WHOLE_TENSOR,
        state={},
        learning_rate={"pytree": 2e-2, "cnn_whole": 2e-2},
        matrices=True,
        float32=True,
    ),
    # timm's default clip is (t - 1)^0.333; the paper's Section 5 and optax's, t^(1/4).
    "adopt": Reference("timm.optim.Adopt", {"clip_exp": 0.25}, {}, "paper"),
    "ademamix": Reference(
        "pytorch_optimizer.AdEMAMix",
        {**_DECAY, "weight_decouple": True, "t_alpha_beta3": NUM_STEPS},
        {**_DECAY, "alpha_warmup": NUM_STEPS, "b3_warmup": NUM_STEPS},
        "paper",
        state={"exp_avg": "m1", "exp_avg_sq": "nu", "exp_avg_slow": "m2"},
    ),
    # MARS: the authors' code (AGI-Arena/MARS) is not on PyPI; pytorch-optimizer's port with
    # optimize_1d gives every leaf MARS, as ours does, and its fixed 1e-15 under the square
    # root is ours' eps_root.
    "mars_adamw": Reference(
        "pytorch_optimizer.MARS",
        {**_DECAY, "mars_type": "adamw", "optimize_1d": True},
        {**_DECAY, "eps_root": 1e-15},
        "pytorch",
        WHOLE_TENSOR,
        torch_layout=True,
    ),
    "adam_mini": Reference(
        "adam_mini.Adam_mini",
        _DECAY,
        _DECAY,
        "pytorch",
        WHOLE_TENSOR,
        state={"m": "mu", "v": "nu", "vmean": "nu"},
        torch_layout=True,
        make=_adam_mini_with_our_blocks,
    ),
    # The authors' package, with a warmup and a decay so that the warmup's convention shows;
    # its z is ours' ScheduleFreeState.z, its exp_avg_sq the base's nu (no first moment).
    "schedule_free_adamw": Reference(
        "schedulefree.AdamWScheduleFree",
        {**_DECAY, "warmup_steps": 50},
        {**_DECAY, "warmup_steps": 50},
        state={"exp_avg_sq": "nu", "z": "z"},
        make=_schedule_free_in_train_mode,
    ),
    # SOAP: torch.optim has none and the authors' soap.py is not on PyPI: pytorch_optimizer's,
    # the authors' rule line for line (m in the params' basis, as soap.py before its Dec 2024
    # "momentum change", which stores it rotated: the same rule), at the authors' defaults
    # but weight_decay 0 (docs/conventions.md), on whole tensors whose eigenbases are unique.
    "soap": Reference(
        "pytorch_optimizer.SOAP",
        {"betas": (0.95, 0.95), "eps": 1e-8, "weight_decay": 0.0}
        | {"precondition_frequency": 10, "max_precondition_dim": 10000},
        {"b1": 0.95, "b2": 0.95, "eps": 1e-8, "weight_decay": 0.0}
        | {"precondition_frequency": 10, "max_precond_dim": 10000},
        "paper",
        NEAR_SQUARE,
        state={"exp_avg": "mu", "exp_avg_sq": "nu"},
    ),
}


def pytree_problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(initial params [62], gradients [500, 62]), float32, flattened in PYTREE_SHAPES order."""
    rng = np.random.default_rng(seed)
    sizes = [int(np.prod(s)) for s in PYTREE_SHAPES.values()]
    size = sum(sizes)
    init = rng.normal(size=size) * 0.5
    drift = rng.normal(size=size) * 0.3
    t = np.arange(NUM_STEPS)[:, None]
    noise_scale = 1.0 / (1.0 + t / 55.0)  # 1 -> 0.1 over the run
    grads = drift + noise_scale * rng.normal(size=(NUM_STEPS, size))
    grads *= np.where(rng.random(size=(NUM_STEPS, size)) < 0.01, 10.0, 1.0)
    offsets = np.cumsum([0, *sizes])
    leaf = dict(zip(PYTREE_SHAPES, zip(offsets[:-1], offsets[1:], strict=True), strict=True))
    start, stop = leaf["conv_bias"]
    grads[:100, start:stop] = 0.0  # frozen, then trained
    start, stop = leaf["dense_bias"]
    grads[:, start:stop] *= 1e-5  # tiny: sqrt(v) ~ 1e-5, eps = 1e-8 shows
    start, stop = leaf["scale"]
    grads[:, start:stop] = 0.0  # never trained
    return init.astype(np.float32), grads.astype(np.float32)


def cnn_problem(
    seed: int = 0, whole: bool = False
) -> tuple[np.ndarray, np.ndarray, list[str], list]:
    """(initial params [94], gradients [500, 94], coordinate names, leaf shapes) of the digits
    CNN; `whole`: of the shrunk CNN_WHOLE, every coordinate ([144], [500, 144])."""
    import jax
    import jax.numpy as jnp
    import optax
    from sklearn.datasets import load_digits

    from adamlab.models import CNN

    images, labels = load_digits(return_X_y=True)
    images = jnp.asarray(images.reshape(-1, 8, 8, 1) / 16.0, jnp.float32)
    labels = jnp.asarray(labels, jnp.int32)
    model = CNN(num_classes=10, **(CNN_WHOLE if whole else {}))
    params = model.init(jax.random.key(seed), images[:1], train=False)["params"]
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    rng = np.random.default_rng(seed)
    picks = [
        np.arange(leaf.size)
        if whole
        else rng.choice(leaf.size, min(leaf.size, CNN_COORDS_PER_ARRAY), replace=False)
        for _, leaf in leaves
    ]
    names = [
        f"{jax.tree_util.keystr(path)}[{i}]"
        for (path, _), idx in zip(leaves, picks, strict=True)
        for i in idx
    ]

    def select(tree):
        flat = [x.reshape(-1)[idx] for x, idx in zip(jax.tree.leaves(tree), picks, strict=True)]
        return jnp.concatenate(flat)

    def loss_fn(params, x, y):
        logits = model.apply({"params": params}, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    tx = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state, i):
        idx = jax.random.choice(jax.random.fold_in(jax.random.key(seed + 1), i), 1797, (64,))
        grads = jax.grad(loss_fn)(params, images[idx], labels[idx])
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, select(grads)

    init = np.asarray(select(params))
    opt_state, recorded = tx.init(params), []
    for i in range(NUM_STEPS):
        params, opt_state, grads = step(params, opt_state, i)
        recorded.append(np.asarray(grads))
    shapes = [leaf.shape for _, leaf in leaves]
    return init.astype(np.float32), np.stack(recorded).astype(np.float32), names, shapes


def near_square_problem(seed: int = 7) -> tuple[np.ndarray, np.ndarray, list]:
    """(initial params [267], gradients [500, 267], leaf shapes), float32, flattened in
    NEAR_SQUARE_SHAPES order: standard normal gradients, those of "tiny" times 1e-6 (sqrt(v)
    ~ 1e-6: where eps = 1e-8 sits in the bias correction shows). NumPy only: `load_problems`
    regenerates the gradients (`REGENERATED`)."""
    rng = np.random.default_rng(seed)
    shapes = list(NEAR_SQUARE_SHAPES.values())
    init = [rng.standard_normal(s) * 0.5 for s in shapes]
    grads = {k: rng.standard_normal((NUM_STEPS, *s)) for k, s in NEAR_SQUARE_SHAPES.items()}
    grads["tiny"] *= 1e-6
    flat = np.concatenate([g.astype(np.float32).reshape(NUM_STEPS, -1) for g in grads.values()], 1)
    init = np.concatenate([np.asarray(x, np.float32).reshape(-1) for x in init])
    return init, flat, shapes


# Problems whose gradients torch_problems.npz does not hold (near_square's 0.5 MB would pass
# test_fixtures_are_small's budget): regenerated from NumPy's stream, which the stored sum of
# each leaf's gradients checks.
REGENERATED = {"near_square": near_square_problem}


def _leaf_sums(grads: np.ndarray, shapes) -> np.ndarray:
    """The float64 sum of each leaf's gradients over the run ([T, N] -> [leaves])."""
    offsets = np.cumsum([0, *(int(np.prod(s)) for s in shapes)])
    return np.array(
        [
            np.sum(grads[:, a:b], dtype=np.float64)
            for a, b in zip(offsets[:-1], offsets[1:], strict=True)
        ]
    )


def load_problems(path) -> dict:
    """problem -> (initial params [N], gradients [T, N], leaf shapes or None: one flat leaf),
    and "param_steps", "state_steps": what `torch_problems.npz` holds."""
    data = np.load(path)
    problems = {"param_steps": data["param_steps"], "state_steps": data["state_steps"]}
    for problem in ("pytree", "cnn", "cnn_whole", "near_square"):
        if f"{problem}_init" in data:
            shapes = json.loads(str(data[f"{problem}_shapes"])) if problem != "cnn" else None
            if isinstance(shapes, dict):
                shapes = list(shapes.values())
            shapes = None if shapes is None else [tuple(s) for s in shapes]
            problems[problem] = (data[f"{problem}_init"], _grads(data, problem, shapes), shapes)
    return problems


def _grads(data, problem: str, shapes) -> np.ndarray:
    """`problem`'s stored gradients, or `REGENERATED`'s, checked against the stored sums."""
    if problem not in REGENERATED:
        return data[f"{problem}_grads"]
    _, grads, _ = REGENERATED[problem]()
    if not np.array_equal(_leaf_sums(grads, shapes), data[f"{problem}_grads_sum"]):
        raise ValueError(f"{problem}: NumPy's stream changed; regenerate the fixtures")
    return grads


def write_problems(path) -> None:
    """Adds the problems `path` lacks (computing them needs JAX, not torch); keeps the others
    byte for byte, so that the fixtures written against them stay valid."""
    arrays = dict(np.load(path)) if path.exists() else {}
    arrays |= {"param_steps": PARAM_STEPS, "state_steps": STATE_STEPS}
    if "pytree_init" not in arrays:
        arrays["pytree_init"], arrays["pytree_grads"] = pytree_problem()
        shapes = {k: list(v) for k, v in PYTREE_SHAPES.items()}
        arrays["pytree_shapes"] = np.array(json.dumps(shapes))
    if "cnn_init" not in arrays:
        arrays["cnn_init"], arrays["cnn_grads"], names, _ = cnn_problem()
        arrays["cnn_coordinates"] = np.array(names)
    if "cnn_whole_init" not in arrays:
        arrays["cnn_whole_init"], arrays["cnn_whole_grads"], _, shapes = cnn_problem(whole=True)
        arrays["cnn_whole_shapes"] = np.array(json.dumps([list(s) for s in shapes]))
    if "near_square_init" not in arrays:
        arrays["near_square_init"], grads, shapes = near_square_problem()
        arrays["near_square_grads_sum"] = _leaf_sums(grads, shapes)
        arrays["near_square_shapes"] = np.array(json.dumps([list(s) for s in shapes]))
    np.savez_compressed(path, **arrays)


def matrix_problem(init: np.ndarray, grads: np.ndarray, shapes):
    """(init, grads, shapes) restricted to the leaves of rank >= 2 (`Reference.matrices`)."""
    offsets = np.cumsum([0, *(int(np.prod(s)) for s in shapes)])
    keep = [(a, b, s) for a, b, s in zip(offsets[:-1], offsets[1:], shapes, strict=True)]
    keep = [(a, b, s) for a, b, s in keep if len(s) >= 2]
    index = np.concatenate([np.arange(a, b) for a, b, _ in keep])
    return init[index], grads[:, index], [s for _, _, s in keep]


def _reference(ref: Reference):
    """The reference's optimizer class: `torch.optim.<name>` or the dotted path's."""
    module, _, name = ref.optimizer.rpartition(".")
    return getattr(importlib.import_module(module or "torch.optim"), name)


@contextlib.contextmanager
def _float32_casts():
    """Within it, ``Tensor.bfloat16()`` returns float32: torch.optim.Muon runs its
    Newton-Schulz iteration in bfloat16 (`torch.optim._muon._zeropower_via_newtonschulz`,
    ``grad.bfloat16()``), 2^-8 relative rounding per step that hides every other difference.
    The rest of its code runs as shipped."""
    import torch

    bfloat16 = torch.Tensor.bfloat16
    torch.Tensor.bfloat16 = lambda self, *args, **kwargs: self.float()
    try:
        yield
    finally:
        torch.Tensor.bfloat16 = bfloat16


def torch_trajectory(name: str, init: np.ndarray, grads: np.ndarray, lr: float, shapes=None):
    """Runs the reference of `name` on the fixed gradients; returns the stored snapshots.

    `shapes`: the leaves to split the flat vector into (one torch parameter each); None keeps
    one parameter. foreach=False: the single-tensor loop, torch's reference implementation.
    A `Reference.torch_layout` leaf of rank >= 2 is the torch (fan_out, fan_in) matrix, its
    snapshots ours' layout again. A state leaf is stored under the name the first
    parameter's state gives it; each parameter contributes its own name for the same leaf
    of ours (Adam-mini: v or vmean).
    """
    import torch

    ref = OPTIMIZERS[name]
    transpose = ref.matrices or ref.torch_layout
    shapes = [init.shape] if shapes is None else list(shapes)
    sizes = [int(np.prod(s)) for s in shapes]
    offsets = np.cumsum([0, *sizes])
    spans = list(zip(offsets[:-1], offsets[1:], shapes, strict=True))

    def to_torch(x, s):
        x = x.reshape(s)
        return torch.from_numpy((x.reshape(-1, s[-1]).T if transpose and x.ndim >= 2 else x).copy())

    def flat(tensors):  # .T: (out, in) -> ours' (in, out); a 1-D or (out, 1) leaf keeps its order
        return np.concatenate(
            [
                np.asarray(t.detach().numpy(), np.float32).T.reshape(-1)
                if transpose
                else np.asarray(t.detach().numpy(), np.float32).reshape(-1)
                for t in tensors
            ]
        )

    params = [torch.nn.Parameter(to_torch(init[a:b], s)) for a, b, s in spans]
    factory = _reference(ref)
    kwargs = dict(ref.kwargs)
    if "foreach" in inspect.signature(factory).parameters:
        kwargs["foreach"] = False
    opt = ref.make(factory, params, lr, kwargs) if ref.make else factory(params, lr=lr, **kwargs)
    state_names = STATE_NAMES if ref.state is None else ref.state
    out = {"params": [], "state": {}}
    for t in range(1, NUM_STEPS + 1):
        for p, (a, b, s) in zip(params, spans, strict=True):
            p.grad = to_torch(grads[t - 1, a:b], s)
        with _float32_casts() if ref.float32 else contextlib.nullcontext():
            opt.step()
        if t in PARAM_STEPS:
            out["params"].append(flat(params))
        if t in STATE_STEPS:
            for key, ours in state_names.items():
                if key not in opt.state[params[0]]:
                    continue
                if key == "mu_product":  # one scalar per parameter, all equal
                    value = np.float32(opt.state[params[0]][key].item())
                else:
                    names = [k for k, o in state_names.items() if o == ours]
                    value = flat(_state_leaf(opt.state[p], names) for p in params)
                out["state"].setdefault(key, []).append(value)
    return {
        "params": np.stack(out["params"]),
        **{f"state/{k}": np.stack(v) for k, v in out["state"].items()},
    }


def _state_leaf(state: dict, names: list[str]):
    """The first of `names` that a parameter's torch `state` holds."""
    return next(state[key] for key in names if key in state)


def problem_of(name: str, problem: str, problems: dict):
    """(init, grads, shapes) of `problem` as `name`'s reference takes it."""
    init, grads, shapes = problems[problem]
    return (
        matrix_problem(init, grads, shapes) if OPTIMIZERS[name].matrices else (init, grads, shapes)
    )


def write_fixture(out: pathlib.Path, name: str, problems: dict) -> None:
    """Writes torch_<name>.npz: its reference's trajectories on its problems, and the meta
    the test replays them with."""
    import torch

    ref = OPTIMIZERS[name]
    learning_rate = {p: (ref.learning_rate or LEARNING_RATE)[p] for p in ref.problems}
    arrays = {}
    for problem in ref.problems:
        init, grads, shapes = problem_of(name, problem, problems)
        trajectory = torch_trajectory(name, init, grads, learning_rate[problem], shapes)
        arrays |= {f"{problem}/{key}": value for key, value in trajectory.items()}
    meta = {
        "torch": torch.__version__,
        "reference": ref.optimizer,
        "reference_version": _version(ref.optimizer),
        "torch_kwargs": ref.kwargs,
        "ours": ref.ours,
        "convention": ref.convention,
        "problems": list(ref.problems),
        "state": STATE_NAMES if ref.state is None else ref.state,
        "matrices": ref.matrices,
        "torch_layout": ref.torch_layout,
        "float32": ref.float32,
        "learning_rate": learning_rate,
    }
    np.savez_compressed(out / f"torch_{name}.npz", meta=np.array(json.dumps(meta)), **arrays)
    print(f"wrote {out / f'torch_{name}.npz'}")


def _version(optimizer: str) -> str:
    """The version of the package that ships `optimizer` (torch for a torch.optim name)."""
    return importlib.metadata.version(optimizer.partition(".")[0] if "." in optimizer else "torch")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parents[1] / "tests/fixtures"))
    parser.add_argument("--problems", action="store_true", help="add the missing problems (JAX)")
    parser.add_argument("--only", nargs="*", default=None, help="these optimizers' fixtures")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.problems:
        write_problems(out / "torch_problems.npz")
        return
    problems = load_problems(out / "torch_problems.npz")
    for name in OPTIMIZERS if args.only is None else args.only:
        write_fixture(out, name, problems)


if __name__ == "__main__":
    main()
