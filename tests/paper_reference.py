"""The papers' pseudo-code, transcribed line by line in plain NumPy: the "paper" convention's truth.

Each function runs one algorithm on a fixed sequence of gradients (the gradient line
``g_t <- grad f_t(theta_{t-1})`` reads ``grads[t - 1]``), in float32 arrays with the
hyperparameters as Python floats, as a researcher would write it from the paper, and
returns the parameters and the algorithm's state after every step. Lines are quoted in the
comments, numbered as the statements of the algorithm's loop body, in the paper's order.

Two additions to the papers, each marked ``# ours:``:
  * eps where a paper has none (Reddi et al. Alg. 2, Liu et al. Alg. 2, Kingma & Ba Alg. 2):
    it is added to the denominator where Adam has it; eps = 0 is the paper's algorithm (and
    divides 0 by 0 for a coordinate whose gradients are all zero).
  * Loshchilov & Hutter's decoupled decay (their Algorithm 2, line 12: - eta_t lam
    theta_{t-1}) added to Nadam and RAdam (``lam > 0``), for NadamW and RAdamW, which have no
    paper of their own.

Cautious (Liang et al. 2024), MARS (Yuan et al. 2024: the clip's norm) and Adam-mini (Zhang
et al. 2024: the block means) couple the coordinates of a tensor: their functions take a list
of tensors and run the algorithm on each, whole. So does SOAP (Vyas et al. 2024, its
rotations), on a dict of tensors, in float64 (the eigenbases' truth).

No jax here: nothing shared with the implementation under test.
"""

import math

import numpy as np


def _history():
    return {"params": [], "state": {}}


def _record(history, theta, **state):
    history["params"].append(theta.copy())
    for name, value in state.items():
        history["state"].setdefault(name, []).append(np.array(value, copy=True))


def _stack(history):
    return np.stack(history["params"]), {k: np.stack(v) for k, v in history["state"].items()}


def adam(theta0, grads, alpha, beta1=0.9, beta2=0.999, eps=1e-8):
    """Kingma & Ba 2015, Algorithm 1 (Adam). State: m, v."""
    theta, history = theta0.copy(), _history()
    m = np.zeros_like(theta)  # m_0 <- 0 (Initialize 1st moment vector)
    v = np.zeros_like(theta)  # v_0 <- 0 (Initialize 2nd moment vector)
    for t in range(1, len(grads) + 1):  # t <- t + 1
        g = grads[t - 1]  # 1: g_t <- grad_theta f_t(theta_{t-1})
        m = beta1 * m + (1 - beta1) * g  # 2: m_t <- beta1 m_{t-1} + (1 - beta1) g_t
        v = beta2 * v + (1 - beta2) * g * g  # 3: v_t <- beta2 v_{t-1} + (1 - beta2) g_t^2
        m_hat = m / (1 - beta1**t)  # 4: m^_t <- m_t / (1 - beta1^t)
        v_hat = v / (1 - beta2**t)  # 5: v^_t <- v_t / (1 - beta2^t)
        theta = theta - alpha * m_hat / (np.sqrt(v_hat) + eps)  # 6: theta_t <- ...
        _record(history, theta, m=m, v=v)
    return _stack(history)


def adamax(theta0, grads, alpha, beta1=0.9, beta2=0.999, eps=1e-8):
    """Kingma & Ba 2015, Section 7.1, Algorithm 2 (AdaMax). State: m, u."""
    theta, history = theta0.copy(), _history()
    m = np.zeros_like(theta)  # m_0 <- 0
    u = np.zeros_like(theta)  # u_0 <- 0 (Initialize the exponentially weighted infinity norm)
    for t in range(1, len(grads) + 1):
        g = grads[t - 1]  # 1: g_t <- grad_theta f_t(theta_{t-1})
        m = beta1 * m + (1 - beta1) * g  # 2: m_t <- beta1 m_{t-1} + (1 - beta1) g_t
        u = np.maximum(beta2 * u, np.abs(g))  # 3: u_t <- max(beta2 u_{t-1}, |g_t|)
        # 4: theta_t <- theta_{t-1} - (alpha / (1 - beta1^t)) m_t / u_t
        theta = theta - (alpha / (1 - beta1**t)) * m / (u + eps)  # ours: + eps
        _record(history, theta, m=m, u=u)
    return _stack(history)


def amsgrad(theta0, grads, alpha, beta1=0.9, beta2=0.999, eps=1e-8):
    """Reddi, Kale & Kumar 2018, Algorithm 2 (AMSGrad), with constant alpha_t = alpha and
    beta_1t = beta1 (the paper's experiments) and F = R^d (the projection is the identity).
    State: m, v, v^ (the running maximum)."""
    theta, history = theta0.copy(), _history()
    m = np.zeros_like(theta)  # m_0 = 0
    v = np.zeros_like(theta)  # v_0 = 0
    v_hat = np.zeros_like(theta)  # v^_0 = 0
    for t in range(1, len(grads) + 1):
        g = grads[t - 1]  # 1: g_t = grad f_t(x_t)
        m = beta1 * m + (1 - beta1) * g  # 2: m_t = beta_1t m_{t-1} + (1 - beta_1t) g_t
        v = beta2 * v + (1 - beta2) * g * g  # 3: v_t = beta2 v_{t-1} + (1 - beta2) g_t^2
        v_hat = np.maximum(v_hat, v)  # 4: v^_t = max(v^_{t-1}, v_t), V^_t = diag(v^_t)
        theta = theta - alpha * m / (np.sqrt(v_hat) + eps)  # 5: x_{t+1} = x_t - a_t m_t /
        _record(history, theta, m=m, v=v, v_hat=v_hat)  #      sqrt(V^_t)  (ours: + eps)
    return _stack(history)


def nadam(theta0, grads, eta, mu=0.9, nu=0.999, eps=1e-8, psi=0.004, lam=0.0):
    """Dozat 2016, Algorithm 2 (Nadam), with the momentum schedule of Section 3,
    mu_t = mu (1 - 0.5 * 0.96^(t psi)), psi = 1/250. State: m, n, prod_{i<=t} mu_i.
    `lam`: Loshchilov & Hutter's decoupled decay (ours: NadamW)."""

    def mu_(t):
        return mu * (1 - 0.5 * 0.96 ** (t * psi))

    theta, history = theta0.copy(), _history()
    m = np.zeros_like(theta)
    n = np.zeros_like(theta)
    product = 1.0  # prod_{i=1}^{t} mu_i (in float64, as the Python float it is)
    for t in range(1, len(grads) + 1):
        g = grads[t - 1]  # 1: g_t <- grad_{theta_{t-1}} f_t(theta_{t-1})
        product *= mu_(t)
        g_hat = g / (1 - product)  # 2: g^ <- g_t / (1 - prod_{i=1}^{t} mu_i)
        m = mu * m + (1 - mu) * g  # 3: m_t <- mu m_{t-1} + (1 - mu) g_t
        m_hat = m / (1 - product * mu_(t + 1))  # 4: m^ <- m_t / (1 - prod_{i=1}^{t+1} mu_i)
        n = nu * n + (1 - nu) * g * g  # 5: n_t <- nu n_{t-1} + (1 - nu) g_t^2
        n_hat = nu * n / (1 - nu**t)  # 6: n^ <- nu n_t / (1 - nu^t)
        m_bar = (1 - mu_(t)) * g_hat + mu_(t + 1) * m_hat  # 7: m- <- (1-mu_t) g^ + mu_{t+1} m^
        decay = lam * theta  # ours: L&H Alg. 2, line 12, with eta_t = 1
        theta = theta - eta * m_bar / (np.sqrt(n_hat) + eps)  # 8: theta_t <- ...
        theta = theta - decay
        _record(history, theta, m=m, n=n, product=np.float32(product))
    return _stack(history)


def radam(theta0, grads, alpha, beta1=0.9, beta2=0.999, eps=1e-8, lam=0.0):
    """Liu et al. 2020, Algorithm 2 (RAdam). State: m, v.
    `lam`: Loshchilov & Hutter's decoupled decay (ours: RAdamW)."""
    theta, history = theta0.copy(), _history()
    m = np.zeros_like(theta)  # m_0, v_0 <- 0, 0
    v = np.zeros_like(theta)
    rho_inf = 2 / (1 - beta2) - 1  # rho_inf <- 2 / (1 - beta2) - 1
    for t in range(1, len(grads) + 1):
        g = grads[t - 1]  # 1: g_t <- grad_theta f_t(theta_{t-1})
        v = beta2 * v + (1 - beta2) * g * g  # 2: v_t <- beta2 v_{t-1} + (1 - beta2) g_t^2
        m = beta1 * m + (1 - beta1) * g  # 3: m_t <- beta1 m_{t-1} + (1 - beta1) g_t
        m_hat = m / (1 - beta1**t)  # 4: m^_t <- m_t / (1 - beta1^t)
        rho = rho_inf - 2 * t * beta2**t / (1 - beta2**t)  # 5: rho_t <- ...
        decay = lam * theta  # ours: L&H Alg. 2, line 12, with eta_t = 1
        if rho > 4:  # 6: if the variance is tractable, i.e. rho_t > 4 then
            # 7: l_t <- sqrt((1 - beta2^t) / v_t)  (ours: 1 / (sqrt(v_t / (1-beta2^t)) + eps))
            ell = 1 / (np.sqrt(v / (1 - beta2**t)) + eps)
            # 8: r_t <- sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
            r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            theta = theta - alpha * r * m_hat * ell  # 9: theta_t <- theta_{t-1} - a r m^ l
        else:
            theta = theta - alpha * m_hat  # 11: theta_t <- theta_{t-1} - alpha_t m^_t
        theta = theta - decay
        _record(history, theta, m=m, v=v)
    return _stack(history)


def adabelief(theta0, grads, alpha, beta1=0.9, beta2=0.999, eps=1e-16):
    """Zhuang et al. 2020, Algorithm 2 (AdaBelief), with F = R^d. State: m, s."""
    theta, history = theta0.copy(), _history()
    m = np.zeros_like(theta)  # m_0 <- 0
    s = np.zeros_like(theta)  # s_0 <- 0
    for t in range(1, len(grads) + 1):
        g = grads[t - 1]  # 1: g_t <- grad_theta f_t(theta_{t-1})
        m = beta1 * m + (1 - beta1) * g  # 2: m_t <- beta1 m_{t-1} + (1 - beta1) g_t
        # 3: s_t <- beta2 s_{t-1} + (1 - beta2)(g_t - m_t)^2 + eps
        s = beta2 * s + (1 - beta2) * (g - m) * (g - m) + eps
        m_hat = m / (1 - beta1**t)  # 4: m^_t <- m_t / (1 - beta1^t)
        s_hat = (s + eps) / (1 - beta2**t)  # 5: s^_t <- (s_t + eps) / (1 - beta2^t)
        theta = theta - alpha * m_hat / (np.sqrt(s_hat) + eps)  # 6: theta_t <- ...
        _record(history, theta, m=m, s=s)
    return _stack(history)


def adamw(theta0, grads, alpha, beta1=0.9, beta2=0.999, eps=1e-8, lam=1e-4, eta=None):
    """Loshchilov & Hutter 2019, Algorithm 2 (AdamW, the decoupled rule, without the L2 term
    of line 6). `eta(t)` is SetScheduleMultiplier (default 1). State: m, v."""
    eta = eta or (lambda t: 1.0)
    theta, history = theta0.copy(), _history()
    m = np.zeros_like(theta)  # m_{t=0} <- 0
    v = np.zeros_like(theta)  # v_{t=0} <- 0
    for t in range(1, len(grads) + 1):  # 4: t <- t + 1
        g = grads[t - 1]  # 5-6: grad f_t(theta_{t-1}) <- SelectBatch(theta_{t-1}); g_t <- it
        m = beta1 * m + (1 - beta1) * g  # 7: m_t <- beta1 m_{t-1} + (1 - beta1) g_t
        v = beta2 * v + (1 - beta2) * g * g  # 8: v_t <- beta2 v_{t-1} + (1 - beta2) g_t^2
        m_hat = m / (1 - beta1**t)  # 9: m^_t <- m_t / (1 - beta1^t)
        v_hat = v / (1 - beta2**t)  # 10: v^_t <- v_t / (1 - beta2^t)
        eta_t = eta(t)  # 11: eta_t <- SetScheduleMultiplier(t)
        # 12: theta_t <- theta_{t-1} - eta_t (alpha m^_t / (sqrt(v^_t) + eps) + lam theta_{t-1})
        theta = theta - eta_t * (alpha * m_hat / (np.sqrt(v_hat) + eps) + lam * theta)
        _record(history, theta, m=m, v=v)
    return _stack(history)


def lion(theta0, grads, eta, beta1=0.9, beta2=0.99, lam=0.0):
    """Chen et al. 2023, Algorithm 2 (Lion), with a constant eta_t = eta. State: m."""
    theta, history = theta0.copy(), _history()
    m = np.zeros_like(theta)  # initialize theta_0, m_0 <- 0
    for t in range(1, len(grads) + 1):
        g = grads[t - 1]  # g_t <- grad_theta f(theta_{t-1})
        c = beta1 * m + (1 - beta1) * g  # c_t <- beta1 m_{t-1} + (1 - beta1) g_t
        # theta_t <- theta_{t-1} - eta_t (sign(c_t) + lambda theta_{t-1})
        theta = theta - eta * (np.sign(c) + lam * theta)
        m = beta2 * m + (1 - beta2) * g  # m_t <- beta2 m_{t-1} + (1 - beta2) g_t
        _record(history, theta, m=m)
    return _stack(history)


# --- Whole-tensor algorithms: LAMB and Muon couple the coordinates of a layer ----------------
# These take and return dicts of layers (name -> array; grads name -> [T, *shape]); a history
# is name -> [T, *shape].


def lamb(theta0, grads, eta, beta1=0.9, beta2=0.999, eps=1e-6, lam=0.0):
    """You et al. 2020, Algorithm 2 (LAMB), phi(z) = z, per layer i. State: m, v."""
    theta = {k: x.copy() for k, x in theta0.items()}
    m = {k: np.zeros_like(x) for k, x in theta.items()}  # m_0 <- 0
    v = {k: np.zeros_like(x) for k, x in theta.items()}  # v_0 <- 0
    history = {"params": {k: [] for k in theta}, "m": {k: [] for k in theta}, "v": {}}
    history["v"] = {k: [] for k in theta}
    for t in range(1, len(next(iter(grads.values()))) + 1):
        for i in theta:
            g = grads[i][t - 1]  # g_t = (1/|S_t|) sum grad l(x_t, s_t)
            m[i] = beta1 * m[i] + (1 - beta1) * g  # m_t = beta1 m_{t-1} + (1 - beta1) g_t
            v[i] = beta2 * v[i] + (1 - beta2) * g * g  # v_t = beta2 v_{t-1} + (1 - beta2) g_t^2
            m_hat = m[i] / (1 - beta1**t)  # m_t = m_t / (1 - beta1^t)
            v_hat = v[i] / (1 - beta2**t)  # v_t = v_t / (1 - beta2^t)
            r = m_hat / (np.sqrt(v_hat) + eps)  # r_t = m_t / (sqrt(v_t) + eps)
            # x_{t+1}^(i) = x_t^(i) - eta_t phi(||x_t^(i)||) / ||r_t^(i) + lam x_t^(i)||
            #               (r_t^(i) + lam x_t^(i))
            step = r + lam * theta[i]
            x_norm, step_norm = np.linalg.norm(theta[i]), np.linalg.norm(step)
            # ours: ratio 1 where either norm is 0 (optax's; the paper divides by 0)
            ratio = x_norm / step_norm if x_norm > 0 and step_norm > 0 else 1.0
            theta[i] = theta[i] - eta * ratio * step
            for name, value in (("params", theta[i]), ("m", m[i]), ("v", v[i])):
                history[name][i].append(np.array(value, copy=True))
    return {name: {k: np.stack(h) for k, h in by.items()} for name, by in history.items()}


def newton_schulz5(G, steps=5, eps=1e-7):
    """Jordan et al. 2024's ``zeropower_via_newtonschulz5``, line by line (in float32: ours;
    the reference casts X to bfloat16)."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.astype(np.float32)
    X = X / (np.linalg.norm(X) + eps)  # X /= (X.norm() + eps)
    if G.shape[0] > G.shape[1]:
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    if G.shape[0] > G.shape[1]:
        X = X.T
    return X


def muon(theta0, grads, lr, momentum=0.95, eps=1e-8, weight_decay=0.0, betas=(0.9, 0.999)):
    """Jordan et al. 2024, ``MuonWithAuxAdam``: ``muon_update`` for the 2-D layers, its
    ``adam_update`` for the others, both followed by ``p.mul_(1 - lr * wd)`` and
    ``p.add_(update, alpha=-lr)``. Matrices here are flax's (fan_in, fan_out); the reference's
    are torch's (fan_out, fan_in): transposed in and out (NS(X^T) = NS(X)^T). State: m (the
    momentum buffer, Adam's buf1), v (buf2)."""
    theta = {k: x.copy() for k, x in theta0.items()}
    m = {k: np.zeros_like(x) for k, x in theta.items()}
    v = {k: np.zeros_like(x) for k, x in theta.items() if x.ndim != 2}
    history = {"params": {k: [] for k in theta}, "m": {k: [] for k in theta}}
    history["v"] = {k: [] for k in v}
    for step in range(1, len(next(iter(grads.values()))) + 1):
        for i, p in theta.items():
            grad = grads[i][step - 1]
            if p.ndim == 2:
                grad, mom = grad.T, m[i].T  # torch's layout
                mom = mom + (1 - momentum) * (grad - mom)  # momentum.lerp_(grad, 1 - beta)
                update = grad + momentum * (mom - grad)  # grad.lerp_(momentum, beta)
                update = newton_schulz5(update, steps=5, eps=eps)
                update = update * max(1, grad.shape[-2] / grad.shape[-1]) ** 0.5
                m[i], update = mom.T, update.T
            else:
                m[i] = m[i] + (1 - betas[0]) * (grad - m[i])  # buf1.lerp_(grad, 1 - betas[0])
                v[i] = v[i] + (1 - betas[1]) * (grad * grad - v[i])  # buf2.lerp_(grad^2, ..)
                buf1c = m[i] / (1 - betas[0] ** step)
                buf2c = v[i] / (1 - betas[1] ** step)
                update = buf1c / (np.sqrt(buf2c) + eps)
                history["v"][i].append(v[i].copy())
            p = p * np.float32(1 - lr * weight_decay)  # p.mul_(1 - lr * weight_decay)
            theta[i] = p - lr * update  # p.add_(update, alpha=-lr)
            history["params"][i].append(theta[i].copy())
            history["m"][i].append(m[i].copy())
    return {name: {k: np.stack(h) for k, h in by.items()} for name, by in history.items()}


def _caution(u, g, eps):
    """Liang et al. 2024, Algorithm 1 ("Caution an Optimizer (Opt) in PyTorch"), for one tensor:
    ``m = (u * g > 0).to(g.dtype)``; the step is ``u * m / (m.mean() + eps)``."""
    m = (u * g > 0).astype(g.dtype)  # m = (u * g > 0).to(g.dtype)
    return u * m / (m.mean() + np.float32(eps))  # p.add_(u * m / (m.mean() + eps), alpha=-lr)


def cautious_adamw(thetas0, grads, alpha, beta1=0.9, beta2=0.999, eps=1e-8, lam=0.0, c_eps=1e-8):
    """C-AdamW: Liang et al.'s Algorithm 1 with Opt = Adam (Kingma & Ba Alg. 1, lines 1-5,
    u = m^_t / (sqrt(v^_t) + eps)) and Loshchilov & Hutter's decoupled decay (Alg. 2, line 12,
    eta_t = 1) outside the mask, as the authors' C-AdamW applies it. `thetas0`, `grads`: one
    entry per tensor (grads[i] is tensor i's [T, ...] history). State per tensor: m, v."""
    runs = []
    for theta0, tensor_grads in zip(thetas0, grads, strict=True):
        theta, history = theta0.copy(), _history()
        m = np.zeros_like(theta)  # m_0 <- 0
        v = np.zeros_like(theta)  # v_0 <- 0
        for t in range(1, len(tensor_grads) + 1):
            g = tensor_grads[t - 1]  # g_t <- grad_theta f_t(theta_{t-1})
            m = beta1 * m + (1 - beta1) * g  # m_t <- beta1 m_{t-1} + (1 - beta1) g_t
            v = beta2 * v + (1 - beta2) * g * g  # v_t <- beta2 v_{t-1} + (1 - beta2) g_t^2
            m_hat = m / (1 - beta1**t)  # m^_t <- m_t / (1 - beta1^t)
            v_hat = v / (1 - beta2**t)  # v^_t <- v_t / (1 - beta2^t)
            u = m_hat / (np.sqrt(v_hat) + eps)  # the update u from Opt (Adam)
            decay = lam * theta  # L&H Alg. 2, line 12: lam theta_{t-1}
            theta = theta - alpha * _caution(u, g, c_eps)  # Liang et al. Alg. 1
            theta = theta - decay
            _record(history, theta, m=m, v=v)
        runs.append(_stack(history))
    return runs


def cautious_lion(thetas0, grads, eta, beta1=0.9, beta2=0.99, lam=0.0, c_eps=1e-8):
    """C-Lion: Liang et al.'s Algorithm 1 with Opt = Lion (Chen et al. Alg. 2, eta_t = eta),
    the decay (eta lambda theta_{t-1}) outside the mask. One entry per tensor, as
    `cautious_adamw`. State per tensor: m."""
    runs = []
    for theta0, tensor_grads in zip(thetas0, grads, strict=True):
        theta, history = theta0.copy(), _history()
        m = np.zeros_like(theta)  # m_0 <- 0
        for t in range(1, len(tensor_grads) + 1):
            g = tensor_grads[t - 1]  # g_t <- grad_theta f(theta_{t-1})
            c = beta1 * m + (1 - beta1) * g  # c_t <- beta1 m_{t-1} + (1 - beta1) g_t
            u = np.sign(c)  # the update u from Opt (Lion): sign(c_t)
            # theta_t <- theta_{t-1} - eta_t (caution(u) + lambda theta_{t-1})
            theta = theta - eta * (_caution(u, g, c_eps) + lam * theta)
            m = beta2 * m + (1 - beta2) * g  # m_t <- beta2 m_{t-1} + (1 - beta2) g_t
            _record(history, theta, m=m)
        runs.append(_stack(history))
    return runs


def adopt(theta0, grads, alpha, beta1=0.9, beta2=0.9999, eps=1e-6, clip=lambda t: t**0.25):
    """Taniguchi et al. 2024, Algorithm 1 (ADOPT), with the clipped momentum of the updated
    paper, Clip(x, c_t) = min(max(x, -c_t), c_t) with c_t = t^(1/4) (`clip`; None: Algorithm 1
    unclipped). State: m, v. The initialisation reads g_0 = grads[0]; it is recorded as the
    first entry (theta_0, m_0, v_0), which is what an optimizer called once per gradient
    returns for it (no step)."""
    theta, history = theta0.copy(), _history()
    g = grads[0]  # g_0 <- grad f_0(theta_0)
    v = g * g  # initialize v_0 <- g_0 ⊙ g_0
    m = np.zeros_like(theta)  # m_0 <- 0
    _record(history, theta, m=m, v=v)
    for t in range(1, len(grads)):
        g = grads[t]  # 1: g_t <- grad_theta f_t(theta_{t-1})
        normalised = g / np.maximum(np.sqrt(v), eps)  # g_t / max{sqrt(v_{t-1}), eps}
        if clip is not None:
            normalised = np.clip(normalised, -clip(t), clip(t))  # Clip(., c_t)
        m = beta1 * m + (1 - beta1) * normalised  # 2: m_t <- beta1 m_{t-1} + (1 - beta1) ...
        theta = theta - alpha * m  # 3: theta_t <- theta_{t-1} - alpha_t m_t
        v = beta2 * v + (1 - beta2) * g * g  # 4: v_t <- beta2 v_{t-1} + (1 - beta2) g_t ⊙ g_t
        _record(history, theta, m=m, v=v)
    return _stack(history)


def ademamix(
    theta0, grads, eta, beta1=0.9, beta2=0.999, beta3=0.9999, alpha=5.0, eps=1e-8, lam=0.0,
    t_alpha=None, t_beta3=None,
):  # fmt: skip
    """Pagliardini et al. 2024, Algorithm 1 (AdEMAMix), with the schedulers of Section 3
    (line 4: alpha(t) <- f_alpha(t, alpha, T_alpha), beta3(t) <- f_beta3(t, beta3,
    beta_start, T_beta3), beta_start = beta1; None: no scheduler) and a constant eta(t) = eta.
    State: m1, m2, nu."""

    def f_alpha(t):  # f_alpha(t, alpha, T_alpha) = min(t alpha / T_alpha, alpha)
        return alpha if t_alpha is None else min(t * alpha / t_alpha, alpha)

    def f_beta3(t):  # min(exp(ln(b_start) ln(b3) / ((1 - t/T) ln(b3) + (t/T) ln(b_start))), b3)
        if t_beta3 is None:
            return beta3
        ln_start, ln_end, a = math.log(beta1), math.log(beta3), t / t_beta3
        return min(math.exp(ln_start * ln_end / ((1 - a) * ln_end + a * ln_start)), beta3)

    theta, history = theta0.copy(), _history()
    m1 = np.zeros_like(theta)  # 2: m1^(0) <- 0
    m2 = np.zeros_like(theta)  #    m2^(0) <- 0
    nu = np.zeros_like(theta)  #    nu^(0) <- 0
    for t in range(1, len(grads) + 1):  # 3: for t in [T]
        alpha_t, beta3_t = f_alpha(t), f_beta3(t)  # 4: schedulers
        g = grads[t - 1]  # 6: g^(t) <- grad L_{theta^(t-1)}(x)
        m1 = beta1 * m1 + (1 - beta1) * g  # 7: m1^(t) <- beta1 m1^(t-1) + (1 - beta1) g^(t)
        m2 = beta3_t * m2 + (1 - beta3_t) * g  # 8: m2^(t) <- beta3 m2^(t-1) + (1 - beta3) g^(t)
        nu = beta2 * nu + (1 - beta2) * g * g  # 9: nu^(t) <- beta2 nu^(t-1) + (1 - beta2) g^2
        m1_hat = m1 / (1 - beta1**t)  # 10: m1^ <- m1^(t) / (1 - beta1^t)
        nu_hat = nu / (1 - beta2**t)  #     nu^ <- nu^(t) / (1 - beta2^t)
        # 11: theta^(t) <- theta^(t-1) - eta ((m1^ + alpha m2^(t)) / (sqrt(nu^) + eps) + lam theta)
        theta = theta - eta * ((m1_hat + alpha_t * m2) / (np.sqrt(nu_hat) + eps) + lam * theta)
        _record(history, theta, m1=m1, m2=m2, nu=nu)
    return _stack(history)


def schedule_free_adamw(
    x1, grads, gamma, beta1=0.9, beta2=0.999, eps=1e-8, lam=0.0, t_warmup=None
):  # fmt: skip
    """Defazio et al. 2024, Algorithm 1 (Schedule-Free AdamW). The params are the gradient
    point: y_{t+1} = (1 - beta1) z_{t+1} + beta1 x_{t+1} after step t (line 5 of the next
    step; y_1 = x_1). State: z, v, x (the average, the point to evaluate)."""
    x, history = x1.copy(), _history()
    z = x.copy()  # 2: z_1 = x_1
    v = np.zeros_like(x)  # 3: v_0 = 0
    gamma_sq_sum = 0.0  # sum_{i=1}^t gamma_i^2 of line 10
    for t in range(1, len(grads) + 1):  # 4: for t = 1 to T
        y = (1 - beta1) * z + beta1 * x  # 5: y_t = (1 - beta1) z_t + beta1 x_t
        g = grads[t - 1]  # 6: g_t in df(y_t, zeta_t)
        v = beta2 * v + (1 - beta2) * g * g  # 7: v_t = beta2 v_{t-1} + (1 - beta2) g_t^2
        warmup = 1.0 if t_warmup is None else min(1.0, t / t_warmup)
        gamma_t = gamma * math.sqrt(1 - beta2**t) * warmup  # 8: gamma sqrt(1-b2^t) min(1, t/T)
        z = z - gamma_t * g / (np.sqrt(v) + eps) - gamma_t * lam * y  # 9: z_{t+1}
        gamma_sq_sum += gamma_t**2
        c = gamma_t**2 / gamma_sq_sum  # 10: c_{t+1} = gamma_t^2 / sum_{i=1}^t gamma_i^2
        x = (1 - c) * x + c * z  # 11: x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1}
        _record(history, (1 - beta1) * z + beta1 * x, z=z, v=v, x=x)
    return _stack(history)


def mars_adamw(
    thetas0, grads, eta, beta1=0.95, beta2=0.99, gamma=0.025, eps=1e-8, lam=0.0, clip=True
):  # fmt: skip
    """Yuan et al. 2024, Algorithm 2 (MARS-AdamW) with the approximate correction of their
    Section 3 (the previous step's gradient for grad f(x_{t-1}, xi_t)) and a constant eta_t;
    Clip(c, 1) per tensor (`clip` False: none). One entry per tensor, as `cautious_adamw`.
    State per tensor: m, v."""
    runs = []
    for theta0, tensor_grads in zip(thetas0, grads, strict=True):
        theta, history = theta0.copy(), _history()
        m = np.zeros_like(theta)  # m_0 <- 0
        v = np.zeros_like(theta)  # v_0 <- 0
        g_prev = tensor_grads[0]  # x_1 <- x_0: at t = 1 the two gradients are one
        for t in range(1, len(tensor_grads) + 1):
            g = tensor_grads[t - 1]  # grad f(x_t, xi_t)
            # c_t = grad f(x_t) + gamma_t (beta1 / (1 - beta1)) (grad f(x_t) - grad f(x_{t-1}))
            c = g + gamma * (beta1 / (1 - beta1)) * (g - g_prev)
            norm = np.linalg.norm(c)  # c~_t = c_t / ||c_t||_2 if ||c_t||_2 > 1, else c_t
            c_tilde = c / norm if clip and norm > 1 else c
            m = beta1 * m + (1 - beta1) * c_tilde  # m_t = beta1 m_{t-1} + (1 - beta1) c~_t
            v = beta2 * v + (1 - beta2) * c_tilde * c_tilde  # v_t = beta2 v + (1 - beta2) c~_t^2
            m_hat = m / (1 - beta1**t)  # m^_t = m_t / (1 - beta1^t)
            v_hat = v / (1 - beta2**t)  # v^_t = v_t / (1 - beta2^t)
            # x_{t+1} = x_t - eta_t (m^_t / (sqrt(v^_t) + eps) + lambda x_t)
            theta = theta - eta * (m_hat / (np.sqrt(v_hat) + eps) + lam * theta)
            g_prev = g
            _record(history, theta, m=m, v=v)
        runs.append(_stack(history))
    return runs


def _mean_per_output_unit(x):
    """mean(x) over each block: a tensor's output unit (its last axis) for ndim >= 2, each
    coordinate otherwise (Zhang et al., Algorithm 2's one block per output neuron)."""
    if x.ndim <= 1:
        return x
    return np.mean(x, axis=tuple(range(x.ndim - 1)), keepdims=True)


def adam_mini(thetas0, grads, eta, beta1=0.9, beta2=0.999, eps=1e-8, lam=0.0):
    """Zhang et al. 2024, Algorithm 1 (Adam-mini, general form) with a constant eta_t and the
    blocks of `_mean_per_output_unit`. One entry per tensor. State per tensor: m, v (one per
    block)."""
    runs = []
    for theta0, tensor_grads in zip(thetas0, grads, strict=True):
        theta, history = theta0.copy(), _history()
        m = np.zeros_like(theta)
        v = np.zeros_like(_mean_per_output_unit(theta))
        for t in range(1, len(tensor_grads) + 1):
            g = tensor_grads[t - 1]  # 4: g = param.grad
            theta = theta - eta * lam * theta  # 5: param = param - eta_t x lambda x param
            m = (1 - beta1) * g + beta1 * m  # 6: m = (1 - beta1) x g + beta1 x m
            m_hat = m / (1 - beta1**t)  # 7: m^ = m / (1 - beta1^t)
            v = (1 - beta2) * _mean_per_output_unit(g * g) + beta2 * v  # 8: mean(g ⊙ g)
            v_hat = v / (1 - beta2**t)  # 9: v^ = v / (1 - beta2^t)
            theta = theta - eta * m_hat / (np.sqrt(v_hat) + eps)  # 10: param - eta_t m^/(...)
            _record(history, theta, m=m, v=v)
        runs.append(_stack(history))
    return runs


def _mode_product(x, q, axis):
    """x with its `axis` multiplied by q^T (x_(i) <- q^T x_(i)): Q_L^T G for axis 0 of a
    matrix, G Q_R for axis 1."""
    return np.moveaxis(np.tensordot(q.T, np.moveaxis(x, axis, 0), axes=1), 0, axis)


def _to_eigenbasis(x, qs):  # G' <- Q_L^T G Q_R (one factor per rotated axis)
    for axis, q in enumerate(qs):
        x = x if q is None else _mode_product(x, q, axis)
    return x


def _from_eigenbasis(x, qs):  # N <- Q_L N' Q_R^T
    for axis, q in enumerate(qs):
        x = x if q is None else _mode_product(x, q.T, axis)
    return x


def _outer(g, axis):  # G G^T for axis 0, G^T G for axis 1 (every other axis contracted)
    others = [a for a in range(g.ndim) if a != axis]
    return np.tensordot(g, g, axes=(others, others))


def _eigenvectors(p, q):
    """Algorithm 4 (Eigenvectors(P, Q)): S <- P Q; Q <- QR(S), with the columns first put in
    the order of the estimates diag(Q^T P Q), largest first (the authors' code); the order is
    returned so that V follows it."""
    s = p @ q  # S <- P Q
    order = np.argsort(-np.einsum("ij,ij->j", q, s), kind="stable")
    q, _ = np.linalg.qr(s[:, order])  # Q <- QR(S)
    return q, order


def soap(thetas0, grads, eta, beta1=0.95, beta2=0.95, eps=1e-8, shampoo_beta=None, f=10,
         eps_after_correction=False):  # fmt: skip
    """Vyas et al. 2024, Algorithm 3 ("a single step of SOAP for an m x n layer"), for each
    tensor of `thetas0` (a dict) on its own, in float64; a tensor of more axes has one
    preconditioner per axis, 1-D and 0-D tensors none (Adam). State: m (M), v (V), and the
    preconditioners L (per axis, as a list).

    Where the box is silent, the authors' soap.py (github.com/nikhilvyas/SOAP):
      * ours: the first gradient only initialises L (and R) and their eigenvectors, by eigh,
        largest eigenvalue first; no step ("first step is skipped so that we never use the
        current gradients in the projection");
      * ours: Adam's bias correction and eps: step eta sqrt(1 - beta2^t) / (1 - beta1^t)
        M' / (sqrt(V) + eps), t counting the steps taken; with `eps_after_correction` optax's
        (M' / (1 - beta1^t)) / (sqrt(V / (1 - beta2^t)) + eps) instead;
      * ours: V's coordinates permuted with Q's columns when they are sorted (Algorithm 4).
    """
    beta_s = beta2 if shampoo_beta is None else shampoo_beta
    history = {"params": {}, "m": {}, "v": {}}
    for key, theta0 in thetas0.items():
        theta = theta0.astype(np.float64)
        M, V = np.zeros_like(theta), np.zeros_like(theta)
        rotated = [theta.ndim >= 2] * theta.ndim
        runs = {"params": [], "m": [], "v": []}
        gs = grads[key].astype(np.float64)
        g = gs[0]  # ours: the first gradient initialises L, R and Q_L, Q_R
        L = [(1 - beta_s) * _outer(g, i) if r else None for i, r in enumerate(rotated)]
        Q = [None if x is None else np.linalg.eigh(x)[1][:, ::-1] for x in L]
        runs["params"].append(theta.copy()), runs["m"].append(M), runs["v"].append(V)
        for t in range(1, len(gs)):
            G = gs[t]  # G <- the gradient of the batch
            G_ = _to_eigenbasis(G, Q)  # G' <- Q_L^T G Q_R
            M = beta1 * M + (1 - beta1) * G  # M <- beta1 M + (1 - beta1) G
            M_ = _to_eigenbasis(M, Q)  # M' <- Q_L^T M Q_R
            V = beta2 * V + (1 - beta2) * G_ * G_  # V <- beta2 V + (1 - beta2) (G' . G')
            if eps_after_correction:  # ours: optax's Adam
                N_ = (M_ / (1 - beta1**t)) / (np.sqrt(V / (1 - beta2**t)) + eps)
            else:  # N' <- M' / sqrt(V), ours: eps and the authors' bias correction
                N_ = math.sqrt(1 - beta2**t) / (1 - beta1**t) * M_ / (np.sqrt(V) + eps)
            N = _from_eigenbasis(N_, Q)  # N <- Q_L N' Q_R^T
            theta = theta - eta * N  # W <- W - eta N
            for i, x in enumerate(L):  # L <- beta2 L + (1 - beta2) G G^T; R alike
                L[i] = None if x is None else beta_s * x + (1 - beta_s) * _outer(G, i)
            if t % f == 0:  # if t % f == 0: Q_L <- Eigenvectors(L, Q_L); Q_R alike
                for i, x in enumerate(L):
                    if x is not None:
                        Q[i], order = _eigenvectors(x, Q[i])
                        V = np.take(V, order, axis=i)  # ours: V follows Q's columns
            runs["params"].append(theta.copy()), runs["m"].append(M), runs["v"].append(V)
        for name, values in runs.items():
            history[name][key] = np.stack(values)
    return history
