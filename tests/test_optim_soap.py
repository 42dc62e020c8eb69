"""SOAP (Vyas et al. 2024) proven on whole tensors: against a float64 NumPy transcription of
the paper's Algorithms 3 and 4 (tests/paper_reference.py) and against Adam where it is Adam
(1-D parameters); against the authors' rule in PyTorch (pytorch_optimizer's SOAP, the
fixture tests/fixtures/torch_soap.npz) in tests/test_optim_torch.py, with every other
reference. optax has SOAP only as an open pull request: there is no twin to compare with
(its `TABLE` entry has none, `optim.reference("soap")` refuses).

The problem (benchmarks/golden_torch.py, "near_square"): a wide and a tall matrix, a conv
kernel (four rotated axes), a matrix of tiny gradients (1e-6: where eps sits in the bias
correction shows), a bias and a scalar (Adam); 500 fixed float32 gradients. SOAP rotates, so
a coordinate's trajectory depends on its whole tensor: the fixtures hold whole tensors.

Tolerance: 5e-6 relative to each coordinate's largest magnitude over the run
(`scaled_error`), for the parameters, m and v. Measured over the 500 steps (ours in float32
on XLA:CPU) against the float64 transcription, params 1.5e-6, m 4.0e-7, v 1.9e-6 (torch's
own float32 run is 2.3e-6 from it). The "optax" convention (eps after the bias correction) is 1.5e-2
away on the tiny matrix: the tolerance discriminates the conventions.

What drifts is the eigenbases: eigh and QR are evaluated by different routines (torch,
LAPACK through NumPy, XLA), a basis is as well defined as its statistic's eigenvalue gaps
allow, and v, an EMA of squared rotated gradients, carries the difference. The bases' column
signs differ as well, which nothing compared here sees: the update, m (in the params' basis)
and v (squares) are invariant to them. Every matrix's sides differ by at most one: a repeated
eigenvalue of the first statistic G G^T (rank min(m, n)) leaves eigh free to choose any basis
of its eigenspace, and two implementations then part at once (measured: 0.6 of the
parameters' scale for an 8 x 24 matrix, both sides correct).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import paper_reference as paper
import pytest
from test_optim_paper import _whole_tensor_run
from test_optim_torch import FIXTURES, _split, golden, scaled_error

from adamlab import optim

RTOL = 5e-6  # see the module docstring
COMPARED = ("params", "m", "v")
LEAVES = tuple(golden.NEAR_SQUARE_SHAPES)
REFERENCE = golden.OPTIMIZERS["soap"]  # the fixture's hyperparameters


def _by_leaf(flat, shapes):
    """A flat vector (or a [T, N] history) as {leaf: array} in NEAR_SQUARE_SHAPES order."""
    return dict(zip(LEAVES, _split(flat, shapes), strict=True))


@pytest.fixture(scope="module")
def problem():
    """(init, gradients [500, ...]) by leaf: the "near_square" problem of torch_problems.npz
    (its gradients regenerated from NumPy's stream and checked by their sums)."""
    init, grads, shapes = golden.load_problems(FIXTURES / "torch_problems.npz")["near_square"]
    return _by_leaf(init, shapes), _by_leaf(grads, shapes)


def _run(tx, init, grads):
    """Ours over the fixed gradients, jitted: params, m and v after every call, [T, ...]."""
    params, state = _whole_tensor_run(tx, init, grads)
    history = {"params": params, "m": state[0].mu, "v": state[0].nu}
    return jax.tree.map(np.asarray, history)


LR = golden.LEARNING_RATE["near_square"]


def _soap(convention):
    """Ours with the fixture's hyperparameters (the authors' defaults, no weight decay)."""
    return optim.soap(LR, **REFERENCE.ours, convention=convention)


@pytest.fixture(scope="module")
def ours_paper(problem):
    init, grads = problem
    return _run(_soap("paper"), init, grads)


def _errors(ours, reference, steps=slice(None)):
    return {
        f"{what}[{leaf}]": scaled_error(ours[what][leaf][steps], reference[what][leaf])
        for what in COMPARED
        for leaf in LEAVES
    }


def test_pytorch_optimizers_first_call_only_initialises(problem):
    """In the fixture, as in ours: the first call takes no step (the parameters have not
    moved after it); then they do. test_optim_torch compares the whole trajectory."""
    init, _ = problem
    data = np.load(FIXTURES / "torch_soap.npz")
    shapes = list(golden.NEAR_SQUARE_SHAPES.values())
    torch_params = _by_leaf(data["near_square/params"], shapes)
    np.testing.assert_array_equal(torch_params["wide"][0], init["wide"])
    assert np.abs(torch_params["wide"][-1] - init["wide"]).max() > 0.1


def test_paper_convention_matches_the_papers_algorithm_in_float64(problem, ours_paper):
    init, grads = problem
    reference = paper.soap(init, grads, LR)
    errors = _errors(ours_paper, reference)
    bad = {k: f"{e:.2g}" for k, e in errors.items() if not e <= RTOL}
    assert not bad, f"soap differs from Algorithm 3 by {bad}"
    # optax's bias correction (eps after it) is another rule: 1e-2 away on the tiny matrix.
    optax_rule = paper.soap(init, grads, LR, eps_after_correction=True)
    assert scaled_error(ours_paper["params"]["tiny"], optax_rule["params"]["tiny"]) > 1e-3


@pytest.mark.slow
def test_optax_convention_matches_the_algorithm_with_optaxs_bias_correction(problem):
    init, grads = problem
    ours = _run(_soap("optax"), init, grads)
    reference = paper.soap(init, grads, LR, eps_after_correction=True)
    errors = _errors(ours, reference)
    bad = {k: f"{e:.2g}" for k, e in errors.items() if not e <= RTOL}
    assert not bad, f"soap (optax) differs from Algorithm 3 with optax's correction by {bad}"


def test_one_dimensional_parameters_take_adam_after_the_first_call():
    """SOAP keeps 1-D (and 0-D) leaves in their basis: there it is Adam, the first call
    excepted (it reads g_0 only, as the authors' first step). ``soap`` on g_0, ..., g_T is
    ``adam`` on g_1, ..., g_T: the same operations, which XLA contracts into fused
    multiply-adds differently in the two programs (an ulp here and there): 1e-6 of each
    coordinate's scale over the 40 steps, where a wrong step count is 1e-2 off."""
    rng = np.random.default_rng(3)
    init = {"b": rng.standard_normal(5).astype(np.float32), "s": np.float32(0.5)}
    grads = {"b": rng.standard_normal((41, 5)), "s": rng.standard_normal(41)}
    grads = jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), grads)
    hparams = {"b1": 0.9, "b2": 0.99, "eps": 1e-8}
    soap = _run(optim.soap(1e-2, weight_decay=0.0, **hparams), init, grads)
    adam = _run(optim.adam(1e-2, **hparams), init, jax.tree.map(lambda g: g[1:], grads))
    for what in ("params", "m", "v"):
        for leaf in init:
            np.testing.assert_array_equal(
                soap[what][leaf][0], init[leaf] if what == "params" else 0
            )
            assert scaled_error(soap[what][leaf][1:], adam[what][leaf]) <= 1e-6, (what, leaf)
    unskipped = _run(optim.adam(1e-2, **hparams), init, grads)  # Adam from g_0 on
    assert scaled_error(soap["params"]["b"], unskipped["params"]["b"]) > 1e-2


def test_first_calls_by_hand():
    """G = diag(1, 2): the first call sets L = R = (1 - b2) G G^T = diag(0.05, 0.2) and their
    eigenvectors, largest eigenvalue first (a permutation), and takes no step; the second is
    Adam's first step in that basis, sign(G) where G is nonzero, 0 elsewhere."""
    tx = optim.scale_by_soap()
    update = jax.jit(tx.update)
    g = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    u, state = update(g, tx.init(g))
    np.testing.assert_array_equal(u, jnp.zeros((2, 2)))
    for statistic, basis in zip(state.preconditioners, state.bases, strict=True):
        np.testing.assert_allclose(statistic, jnp.diag(jnp.array([0.05, 0.2])), rtol=1e-6)
        np.testing.assert_array_equal(jnp.abs(basis), jnp.array([[0.0, 1.0], [1.0, 0.0]]))
    assert int(state.count) == 1 and not jnp.any(state.mu) and not jnp.any(state.nu)
    u, state = update(g, state)
    np.testing.assert_allclose(u, jnp.eye(2), rtol=1e-6)  # m / (sqrt(v) + eps): 1e-8 off 1
    np.testing.assert_allclose(state.mu, 0.05 * g, rtol=1e-6)  # (1 - b1) g, unrotated
    np.testing.assert_allclose(state.nu, 0.05 * jnp.diag(jnp.array([4.0, 1.0])), rtol=1e-6)


def test_rotating_the_problem_rotates_the_trajectory():
    """SOAP is equivariant to fixed orthogonal rotations of a matrix's rows and columns
    (L -> U L U^T, its eigenvectors with it): on gradients U G_t V^T from U W_0 V^T it follows
    U W_t V^T (up to float32 rounding through 30 steps and three refreshes: 1e-5). Adam,
    coordinate-wise, does not (1e-2 apart)."""
    rng = np.random.default_rng(5)
    u_rot, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    v_rot, _ = np.linalg.qr(rng.standard_normal((9, 9)))
    w0 = rng.standard_normal((8, 9)).astype(np.float32)
    grads = rng.standard_normal((30, 8, 9)).astype(np.float32)
    turn = lambda x: (u_rot @ x @ v_rot.T).astype(np.float32)
    for name, rotated in (("soap", True), ("adam", False)):
        tx = optim.create(name, learning_rate=1e-2, **({"weight_decay": 0.0} if rotated else {}))
        init = {"plain": w0, "turned": turn(w0)}  # two leaves: two independent problems
        stream = {"plain": grads, "turned": np.stack([turn(g) for g in grads])}
        params = _run(tx, init, stream)["params"]
        error = np.abs(params["turned"][-1] - turn(params["plain"][-1])).max()
        assert error < 1e-5 if rotated else error > 1e-2, (name, error)


def test_pytrees_with_tuples_none_and_empty_subtrees_under_jit():
    """The state holds a tuple per leaf (one statistic per axis): a params tree of tuples,
    None leaves and empty subtrees keeps its structure, and bfloat16 params their dtype."""
    params = (
        (jnp.ones((3, 4)), jnp.ones(2)),
        {"none": None, "empty": {}, "k": jnp.ones((2, 2, 2))},
    )
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    tx = optim.soap(1e-2)
    update = jax.jit(tx.update)
    state = tx.init(params)
    rng = np.random.default_rng(0)
    for _ in range(3):
        grads = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), params)
        updates, state = update(grads, state, params)
        assert jax.tree.structure(updates) == jax.tree.structure(params)
        assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
    assert len(state[0].preconditioners[0][0]) == 2 and state[0].preconditioners[0][1] == (None,)
    assert all(np.isfinite(np.asarray(x, np.float32)).all() for x in jax.tree.leaves(state))


def test_vmapped_members_refresh_their_own_bases_one_matrix_per_lapack_call():
    """A sweep vmaps SOAP over its members, and vmap turns a switch on a batched index into a
    select that computes every branch: eigh and QR at every step. jaxlib also splits a batched
    LAPACK call over the CPU thread pool and blocks a pool thread until the parts are done:
    two such calls at once on a 2-thread pool waited for each other forever (a 16-member
    digits sweep hung in sgeqrf and sorgqr). So the members loop: each takes its own branch,
    every eigh and QR gets one matrix, and each member's basis is the one it gets alone."""
    tx = optim.soap(1e-2, precondition_frequency=1)
    members = 4
    shapes = {"a": (12, 8), "b": (8, 6)}
    grads = {
        k: jax.random.normal(jax.random.key(i), (members, *s))
        for i, (k, s) in enumerate(shapes.items())
    }
    params = jax.tree.map(jnp.ones_like, grads)
    states = jax.vmap(tx.init)(params)

    def two_steps(g, state, p):  # The first call takes the eigenbases (eigh), the second QR.
        _, state = tx.update(g, state, p)
        return tx.update(jax.tree.map(lambda x: 2 * x, g), state, p)

    text = jax.jit(jax.vmap(two_steps)).lower(grads, states, params).as_text()
    lapack = re.findall(r"custom_call @(lapack_\w+)\(([^)]*)\).*?: \((tensor<[^>]*>)", text)
    assert {name for name, _, _ in lapack} >= {"lapack_ssyevd_ffi", "lapack_sgeqrf_ffi"}
    for name, _, operand in lapack:
        assert re.fullmatch(r"tensor<\d+x\d+xf32>", operand), (name, operand)  # No batch axis.
    assert "stablehlo.case" in text  # A branch per member, not a select of all of them.

    from adamlab.optim import transform

    branch = jnp.array([0, 1, 2, 1])  # Members at different steps: each takes its own.
    stats = jax.random.normal(jax.random.key(9), (members, 24, 24))
    stats = stats @ jnp.swapaxes(stats, 1, 2)  # Symmetric, as SOAP's statistics.
    bases = jax.vmap(lambda m: jnp.linalg.qr(m)[0])(
        jax.random.normal(jax.random.key(3), stats.shape)
    )
    together = jax.jit(jax.vmap(transform._new_basis))(branch, stats, bases)
    for i in range(members):
        alone = jax.jit(transform._new_basis)(branch[i], stats[i], bases[i])
        for a, b in zip(alone, together, strict=True):
            np.testing.assert_array_equal(a, b[i])
    np.testing.assert_array_equal(together[0][2], bases[2])  # Branch 2 keeps the basis.
