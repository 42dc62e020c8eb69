"""Golden whole-tensor trajectories of the optimizers that couple coordinates: MARS and Adam-mini.

    python benchmarks/golden_coupled.py [--out tests/fixtures]

writes `torch_mars_adamw.npz` and `torch_adam_mini.npz`: their PyTorch implementations on
golden_torch.py's "pytree" problem (its initial parameters and 500 fixed float32 gradients,
`golden_torch.pytree_problem`), each leaf one whole tensor. MARS clips each tensor's corrected
gradient to norm 1 and Adam-mini averages g^2 over blocks of a tensor, so a coordinate's
trajectory depends on its tensor's others: golden_torch.py's per-coordinate CNN replay cannot
prove them. `tests/test_optim_torch.py` replays the gradients through ours with
``convention="pytorch"``. Needs no jax (only torch, pytorch_optimizer and adam_mini).

The references:

  * MARS: pytorch_optimizer's ``MARS(mars_type="adamw", optimize_1d=True)`` (the authors'
    code, AGI-Arena/MARS, is not on PyPI; the port keeps its correction and clipping, and
    differs in eps's place, docs/conventions.md); ``optimize_1d`` gives every leaf MARS, as
    ours does; the per-tensor loop (``foreach=False``).
  * Adam-mini: the authors' ``adam_mini.Adam_mini`` (1.1.1). It partitions by parameter
    name; the leaves are named so that it computes ours' partition: the kernels as
    ``mlp.*`` weights in PyTorch's (out, in) layout (a conv's HWIO kernel as (O, H*W*I)), one
    v per row = per output unit; biases by name, which it runs as Adam. It exempts biases
    from the decay by name: the fixture sets every group's decay, as ours decays every leaf
    without a mask.

Stored, in ours' layout (flattened leaves in golden_torch.PYTREE_SHAPES order): the
parameters after golden_torch.PARAM_STEPS, and the state after golden_torch.STATE_STEPS,
named as ours' (mu, nu; Adam-mini's nu holds one value per block).
"""

import argparse
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import golden_torch  # noqa: E402

FIXTURES = pathlib.Path(__file__).parents[1] / "tests" / "fixtures"
LEARNING_RATE = 1e-2
WEIGHT_DECAY = 1e-2
# name -> ours' hyperparameters besides learning_rate (pytorch_optimizer's MARS adds a fixed
# 1e-15 under its square root: ours' eps_root).
OURS = {
    "mars_adamw": {"weight_decay": WEIGHT_DECAY, "eps_root": 1e-15},
    "adam_mini": {"weight_decay": WEIGHT_DECAY},
}
# Adam-mini's names for golden_torch.PYTREE_SHAPES' leaves: its partition is by name.
ADAM_MINI_NAMES = {
    "conv_bias": "conv.bias",
    "conv_kernel": "mlp.conv.weight",
    "dense_bias": "dense.bias",
    "dense_kernel": "mlp.dense.weight",
    "scale": "scale",
}


def to_torch_layout(leaf: np.ndarray) -> np.ndarray:
    """Ours' (..., out) kernel as PyTorch's (out, rest) weight; other leaves as they are."""
    return leaf.reshape(-1, leaf.shape[-1]).T.copy() if leaf.ndim >= 2 else leaf.copy()


def from_torch_layout(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of `to_torch_layout` for a parameter or m; a (out, 1) v stays in order."""
    if len(shape) >= 2 and value.shape == (shape[-1], int(np.prod(shape[:-1]))):
        return value.T.reshape(shape)
    return value


def _optimizer(name: str, named_params: list):
    params = [p for _, p in named_params]
    if name == "mars_adamw":
        from pytorch_optimizer import MARS

        return MARS(
            params, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY, mars_type="adamw",
            optimize_1d=True, foreach=False,
        )  # fmt: skip
    from adam_mini import Adam_mini

    opt = Adam_mini(named_params, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY, verbose=False)
    for group in opt.param_groups:  # its name rule exempts biases: decay every leaf
        group["weight_decay"] = WEIGHT_DECAY
    return opt


# torch state name -> ours (first element of the chain's state).
STATE_NAMES = {"exp_avg": "mu", "exp_avg_sq": "nu", "m": "mu", "v": "nu", "vmean": "nu"}


def _state(opt, param, ours: str):
    """`param`'s state tensor that ours calls `ours` (Adam-mini names v by the kind of block)."""
    return next(v for k, v in opt.state[param].items() if STATE_NAMES.get(k) == ours)


def trajectory(name: str, init: np.ndarray, grads: np.ndarray) -> dict[str, np.ndarray]:
    """`name`'s PyTorch implementation on the pytree problem, whole tensors, ours' layout."""
    import torch

    shapes = list(golden_torch.PYTREE_SHAPES.values())
    offsets = np.cumsum([0, *(int(np.prod(s)) for s in shapes)])
    spans = list(zip(offsets[:-1], offsets[1:], shapes, strict=True))
    named = [
        (
            ADAM_MINI_NAMES[key],
            torch.nn.Parameter(torch.from_numpy(to_torch_layout(init[a:b].reshape(s)))),
        )
        for key, (a, b, s) in zip(golden_torch.PYTREE_SHAPES, spans, strict=True)
    ]
    opt = _optimizer(name, named)

    def snapshot(values) -> np.ndarray:
        """Tensors in ours' layout, flattened and concatenated in PYTREE_SHAPES order."""
        leaves = (
            from_torch_layout(v.detach().numpy(), s)
            for v, (*_, s) in zip(values, spans, strict=True)
        )
        return np.concatenate([np.asarray(x, np.float32).reshape(-1) for x in leaves])

    snapshots: dict[str, list] = {}
    for t in range(1, golden_torch.NUM_STEPS + 1):
        for (_, p), (a, b, s) in zip(named, spans, strict=True):
            p.grad = torch.from_numpy(to_torch_layout(grads[t - 1, a:b].reshape(s)))
        opt.step()
        if t in golden_torch.PARAM_STEPS:
            snapshots.setdefault("params", []).append(snapshot(p for _, p in named))
        if t in golden_torch.STATE_STEPS:
            for ours in ("mu", "nu"):
                values = [_state(opt, p, ours) for _, p in named]
                snapshots.setdefault(f"state/{ours}", []).append(snapshot(values))
    return {key: np.stack(history) for key, history in snapshots.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=FIXTURES)
    out = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    from importlib.metadata import version

    import torch

    init, grads = golden_torch.pytree_problem()
    versions = {
        "torch": torch.__version__,
        "mars_adamw": f"pytorch_optimizer {version('pytorch_optimizer')}",
        "adam_mini": f"adam_mini {version('adam_mini')}",
    }
    for name, ours in OURS.items():
        arrays = {f"pytree/{k}": v for k, v in trajectory(name, init, grads).items()}
        meta = {
            "torch": versions["torch"],
            "reference": versions[name],
            "ours": ours,
            "learning_rate": {"pytree": LEARNING_RATE},
        }
        np.savez_compressed(out / f"torch_{name}.npz", meta=np.array(json.dumps(meta)), **arrays)
        print(f"wrote {out / f'torch_{name}.npz'}")


if __name__ == "__main__":
    main()
