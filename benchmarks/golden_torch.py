"""Golden trajectories of `torch.optim`: the ground truth of the "pytorch" convention (issue 12).

    pip install -e '.[torch]'
    python benchmarks/golden_torch.py [--out tests/fixtures]

writes `torch_problems.npz` (two problems: initial parameters and a fixed sequence of 500
float32 gradients each) and one `torch_<name>.npz` per optimizer (its trajectory on both).
`tests/test_optim_torch.py` replays the same gradients through ours with
``convention="pytorch"`` and compares, so that the default test suite needs no torch; with
torch installed the same test also runs torch live.

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
    sequence of updates as in the whole network.

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

About 0.6 MB in all. Runs on the CPU in ~1 minute (the CNN's gradients are the long part).
"""

import argparse
import json
import pathlib

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

# name -> (torch.optim class name, torch kwargs, ours' hyperparameters besides learning_rate).
# Decoupled decay 1e-2 (torch.optim.AdamW's default) is set explicitly on both sides.
OPTIMIZERS = {
    "adam": ("Adam", {}, {}),
    "adamw": ("AdamW", {"weight_decay": 1e-2}, {"weight_decay": 1e-2}),
    "amsgrad": ("Adam", {"amsgrad": True}, {}),
    "nadam": ("NAdam", {}, {}),
    "nadamw": (
        "NAdam",
        {"weight_decay": 1e-2, "decoupled_weight_decay": True},
        {"weight_decay": 1e-2},
    ),
    "radam": ("RAdam", {}, {}),
    "radamw": (
        "RAdam",
        {"weight_decay": 1e-2, "decoupled_weight_decay": True},
        {"weight_decay": 1e-2},
    ),
    "adamax": ("Adamax", {}, {}),
}
LEARNING_RATE = {"pytree": 1e-2, "cnn": 3e-3}
# torch state name -> ours (field of the rescaling transform's state).
STATE_NAMES = {
    "exp_avg": "mu",
    "exp_avg_sq": "nu",
    "max_exp_avg_sq": "nu_max",
    "exp_inf": "nu",
    "mu_product": "mu_product",
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


def cnn_problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(initial params [94], gradients [500, 94], coordinate names) of the digits CNN."""
    import jax
    import jax.numpy as jnp
    import optax
    from sklearn.datasets import load_digits

    from adamlab.models import CNN

    images, labels = load_digits(return_X_y=True)
    images = jnp.asarray(images.reshape(-1, 8, 8, 1) / 16.0, jnp.float32)
    labels = jnp.asarray(labels, jnp.int32)
    model = CNN(num_classes=10)
    params = model.init(jax.random.key(seed), images[:1], train=False)["params"]
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    rng = np.random.default_rng(seed)
    picks = [
        rng.choice(leaf.size, min(leaf.size, CNN_COORDS_PER_ARRAY), replace=False)
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
    return init.astype(np.float32), np.stack(recorded).astype(np.float32), names


def torch_trajectory(name: str, init: np.ndarray, grads: np.ndarray, lr: float, shapes=None):
    """Runs torch.optim's `name` on the fixed gradients; returns the stored snapshots.

    `shapes`: the leaves to split the flat vector into (one torch parameter each); None keeps
    one parameter. foreach=False: the single-tensor loop, torch's reference implementation.
    """
    import torch

    class_name, kwargs, _ = OPTIMIZERS[name]
    shapes = [init.shape] if shapes is None else list(shapes)
    sizes = [int(np.prod(s)) for s in shapes]
    offsets = np.cumsum([0, *sizes])
    params = [
        torch.nn.Parameter(torch.from_numpy(init[a:b].reshape(s).copy()))
        for a, b, s in zip(offsets[:-1], offsets[1:], shapes, strict=True)
    ]
    opt = getattr(torch.optim, class_name)(params, lr=lr, foreach=False, **kwargs)

    def flat(values):
        return np.concatenate([np.asarray(v, np.float32).reshape(-1) for v in values])

    out = {"params": [], "state": {}}
    for t in range(1, NUM_STEPS + 1):
        for p, a, b, s in zip(params, offsets[:-1], offsets[1:], shapes, strict=True):
            p.grad = torch.from_numpy(grads[t - 1, a:b].reshape(s).copy())
        opt.step()
        if t in PARAM_STEPS:
            out["params"].append(flat(p.detach().numpy() for p in params))
        if t in STATE_STEPS:
            for key in STATE_NAMES:
                if key in opt.state[params[0]]:
                    if key == "mu_product":  # one scalar per parameter, all equal
                        value = np.float32(opt.state[params[0]][key].item())
                    else:
                        value = flat(opt.state[p][key].detach().numpy() for p in params)
                    out["state"].setdefault(key, []).append(value)
    return {
        "params": np.stack(out["params"]),
        **{f"state/{k}": np.stack(v) for k, v in out["state"].items()},
    }


# SOAP (Vyas et al. 2024) couples a tensor's coordinates (its rotations): whole tensors, not
# coordinates. torch.optim has none and the authors' soap.py is not on PyPI: this is
# pytorch_optimizer's SOAP, the authors' rule line for line (m in the params' basis, as
# soap.py before its Dec 2024 "momentum change", which stores it rotated: the same rule), at
# the authors' defaults but weight_decay 0 (docs/conventions.md). Every matrix's sides differ
# by at most one: the first statistic G G^T (rank min(m, n)) then has no repeated eigenvalue,
# where a repeated one leaves eigh's basis arbitrary and the trajectories apart.
SOAP_SHAPES = {
    "bias": (8,),
    "conv": (3, 3, 2, 4),
    "scale": (),
    "tall": (9, 8),
    "tiny": (6, 7),
    "wide": (8, 9),
}  # in jax.tree order
SOAP_KWARGS = {"betas": (0.95, 0.95), "eps": 1e-8, "weight_decay": 0.0}
SOAP_KWARGS |= {"precondition_frequency": 10, "max_precondition_dim": 10000}
SOAP_LR = 1e-2
SOAP_STATE_NAMES = {"exp_avg": "mu", "exp_avg_sq": "nu"}


def soap_problem(seed: int = 7) -> tuple[dict, dict]:
    """(init, gradients [500, ...]) by leaf, float32: standard normal gradients, those of
    "tiny" times 1e-6 (sqrt(v) ~ 1e-6: where eps = 1e-8 sits in the bias correction shows)."""
    rng = np.random.default_rng(seed)
    init = {k: np.asarray(rng.standard_normal(s) * 0.5, np.float32) for k, s in SOAP_SHAPES.items()}
    grads = {k: rng.standard_normal((NUM_STEPS, *s)) for k, s in SOAP_SHAPES.items()}
    grads["tiny"] *= 1e-6
    return init, {k: g.astype(np.float32) for k, g in grads.items()}


def soap_trajectory(init: dict, grads: dict) -> dict:
    """pytorch_optimizer's SOAP on the whole tensors: params, exp_avg and exp_avg_sq by leaf
    after the steps of PARAM_STEPS (step 1 only initialises: params unchanged)."""
    import torch
    from pytorch_optimizer import SOAP

    params = {k: torch.nn.Parameter(torch.from_numpy(x.copy())) for k, x in init.items()}
    opt = SOAP(params.values(), lr=SOAP_LR, **SOAP_KWARGS)
    out = {}
    for t in range(1, NUM_STEPS + 1):
        for k, p in params.items():
            p.grad = torch.from_numpy(np.array(grads[k][t - 1]))
        opt.step()
        if t in PARAM_STEPS:
            for k, p in params.items():
                out.setdefault(f"params/{k}", []).append(p.detach().numpy().copy())
                for key in SOAP_STATE_NAMES:
                    value = opt.state[p].get(key, torch.zeros_like(p)).detach().numpy().copy()
                    out.setdefault(f"state/{key}/{k}", []).append(value)
    return {k: np.stack(v) for k, v in out.items()}


def write_soap(out: pathlib.Path) -> None:
    """tests/fixtures/torch_soap.npz: the problem's init and pytorch_optimizer's trajectory."""
    from importlib.metadata import version

    import torch

    init, grads = soap_problem()
    # The gradients are soap_problem()'s, regenerated by the tests (their 0.5 MB would
    # double the fixtures); each leaf's sum checks that NumPy's stream has not changed.
    arrays = {f"init/{k}": x for k, x in init.items()}
    arrays |= {f"grads_sum/{k}": np.sum(g, dtype=np.float64) for k, g in grads.items()}
    meta = {
        "torch": torch.__version__,
        "pytorch_optimizer": version("pytorch_optimizer"),
        "torch_optimizer": "pytorch_optimizer.SOAP",
        "torch_kwargs": SOAP_KWARGS,
        "learning_rate": SOAP_LR,
    }
    arrays |= soap_trajectory(init, grads)
    np.savez_compressed(out / "torch_soap.npz", meta=np.array(json.dumps(meta)), **arrays)
    print(f"wrote {out / 'torch_soap.npz'}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parents[1] / "tests/fixtures"))
    args = parser.parse_args(argv)
    import torch

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pytree_init, pytree_grads = pytree_problem()
    cnn_init, cnn_grads, cnn_names = cnn_problem()
    np.savez_compressed(
        out / "torch_problems.npz",
        pytree_init=pytree_init,
        pytree_grads=pytree_grads,
        cnn_init=cnn_init,
        cnn_grads=cnn_grads,
        cnn_coordinates=np.array(cnn_names),
        pytree_shapes=np.array(json.dumps({k: list(v) for k, v in PYTREE_SHAPES.items()})),
        param_steps=PARAM_STEPS,
        state_steps=STATE_STEPS,
    )
    problems = {
        "pytree": (pytree_init, pytree_grads, PYTREE_SHAPES.values()),
        "cnn": (cnn_init, cnn_grads, None),
    }
    for name, (class_name, kwargs, ours) in OPTIMIZERS.items():
        arrays = {}
        for problem, (init, grads, shapes) in problems.items():
            lr = LEARNING_RATE[problem]
            for key, value in torch_trajectory(name, init, grads, lr, shapes).items():
                arrays[f"{problem}/{key}"] = value
        meta = {
            "torch": torch.__version__,
            "torch_optimizer": class_name,
            "torch_kwargs": kwargs,
            "ours": ours,
            "learning_rate": LEARNING_RATE,
        }
        np.savez_compressed(out / f"torch_{name}.npz", meta=np.array(json.dumps(meta)), **arrays)
        print(f"wrote {out / f'torch_{name}.npz'}")
    write_soap(out)


if __name__ == "__main__":
    main()
