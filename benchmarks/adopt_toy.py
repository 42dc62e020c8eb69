"""ADOPT's headline claim on its two toy problems: it converges where Adam, at the same b2,
goes to the wrong end.

    python benchmarks/adopt_toy.py [--out benchmarks/results]

writes `adopt_toy.png` (theta_t of Adam, AMSGrad and ADOPT on both problems) and
`adopt_toy.md` (their last iterates). Both problems are univariate and linear on the
feasible set [-1, 1], where the minimiser is theta = -1; every optimizer here is ours, and the
projection onto [-1, 1] after each step is this script's (optax has none):

  * Reddi et al.'s counterexample (ICLR 2018, Section 3): the online losses
    f_t(x) = C x if t mod 3 == 1 else -x, C = 3; with b1 = 0 and b2 = 1 / (1 + C^2) = 0.1
    Adam converges to x = +1 (their Theorem 1), the worst point;
  * the ADOPT paper's stochastic toy problem (Taniguchi et al., NeurIPS 2024):
    f(theta) = k theta with probability 1/k, -theta otherwise (E f = theta / k); at small b2
    Adam's second moment absorbs the rare gradient k, so its steps follow the frequent -1 and
    theta goes to +1. k = 10, averaged over seeds: at k = 50 ADOPT's drift (~1/k per unit
    step) is too weak against the rare gradient's noise for 10^4 steps (its mean last
    iterate stays near 0 over 16 seeds) while Adam still reaches +1.

ADOPT normalises g_t by the previous second moment, v_{t-1}, which does not contain g_t: the
rare large gradient is not divided by itself. The claim is Algorithm 1's (no clipping), whose
convergence theorem holds for any b2; the figure also shows optax's default clipping to
t^(1/4) (the paper's Section 5), which on the stochastic problem cuts the rare normalised
gradient k / sqrt(v) ~ 10 to t^(1/4) until t ~ 10^4, and goes to the wrong end until then.
"""

import argparse
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from adamlab import optim

REDDI_C = 3.0
REDDI_B2 = 1.0 / (1.0 + REDDI_C**2)  # Reddi et al.'s Theorem 1: Adam fails with b1 = 0
TOY_K = 10
TOY_B2 = 0.1


def reddi_gradients(steps: int, c: float = REDDI_C) -> np.ndarray:
    """f_t'(x) for t = 1..steps: c if t mod 3 == 1 else -1 (float32, [steps])."""
    t = np.arange(1, steps + 1)
    return np.where(t % 3 == 1, c, -1.0).astype(np.float32)


def toy_gradients(steps: int, seeds: int, k: float = TOY_K) -> np.ndarray:
    """Samples of f'(theta): k with probability 1/k, else -1 (float32, [seeds, steps])."""
    rng = np.random.default_rng(0)
    return np.where(rng.random((seeds, steps)) < 1.0 / k, k, -1.0).astype(np.float32)


def projected_run(tx, gradients: np.ndarray, x0: float = 0.0) -> np.ndarray:
    """theta_t after each step of `tx` on the gradient sequences [..., steps], projected onto
    [-1, 1] after every step (the online setting of both problems): [..., steps]."""

    def one(grads):
        def step(carry, g):
            x, state = carry
            u, state = tx.update(g[None], state, x)
            x = jnp.clip(x + u, -1.0, 1.0)
            return (x, state), x[0]

        x = jnp.full((1,), x0, jnp.float32)
        return jax.lax.scan(step, (x, tx.init(x)), grads)[1]

    flat = gradients.reshape(-1, gradients.shape[-1])
    return np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(flat))).reshape(gradients.shape)


def optimizers(b1: float, b2: float, lr: float) -> dict:
    """Adam, AMSGrad, ADOPT (Algorithm 1) and ADOPT clipped, at one b2, step size
    lr / sqrt(1 + t) (the decay both convergence analyses assume)."""
    schedule = lambda count: lr / jnp.sqrt(1.0 + count)
    return {
        "Adam": optim.adam(schedule, b1=b1, b2=b2),
        "AMSGrad": optim.amsgrad(schedule, b1=b1, b2=b2),
        "ADOPT": optim.adopt(schedule, b1=b1, b2=b2, use_clipping=False),
        "ADOPT, clipped": optim.adopt(schedule, b1=b1, b2=b2),
    }


def reddi(steps: int = 100_000, lr: float = 1e-2) -> dict:
    """name -> theta_t [steps] on Reddi et al.'s counterexample, b1 = 0, b2 = 1/(1 + C^2)."""
    grads = reddi_gradients(steps)
    return {n: projected_run(tx, grads) for n, tx in optimizers(0.0, REDDI_B2, lr).items()}


def stochastic(steps: int = 10_000, seeds: int = 16, lr: float = 0.1) -> dict:
    """name -> theta_t [seeds, steps] on the ADOPT paper's problem, b1 = 0.9, b2 = 0.1."""
    grads = toy_gradients(steps, seeds)
    return {n: projected_run(tx, grads) for n, tx in optimizers(0.9, TOY_B2, lr).items()}


def main(argv=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    runs = {"reddi": reddi(), "stochastic": stochastic()}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    titles = {
        "reddi": f"Reddi et al.: C = {REDDI_C:g}, b1 = 0, b2 = {REDDI_B2:g}",
        "stochastic": f"ADOPT's toy: k = {TOY_K}, b1 = 0.9, b2 = {TOY_B2:g} (16 seeds)",
    }
    rows = ["| problem | optimizer | last theta (mean over seeds) |", "|---|---|---|"]
    for ax, (problem, thetas) in zip(axes, runs.items(), strict=True):
        for name, theta in thetas.items():
            mean = theta.reshape(-1, theta.shape[-1]).mean(axis=0)
            ax.plot(np.arange(1, mean.size + 1), mean, label=name)
            rows.append(f"| {problem} | {name} | {mean[-1]:+.3f} |")
        ax.set(title=titles[problem], xlabel="step t", xscale="log")
        ax.axhline(-1.0, color="gray", lw=0.5)
    axes[0].set_ylabel("theta_t (the minimiser is -1)")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(out / "adopt_toy.png", dpi=110)
    (out / "adopt_toy.md").write_text(
        "# ADOPT on its toy problems (benchmarks/adopt_toy.py)\n\n" + "\n".join(rows) + "\n"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
