r"""`simulate_expm`: the exact discrete-time propagator of a linear circuit.

For $\dot y = J y + c$ the deviation from equilibrium $e = y - y^*$ obeys $\dot e = J e$, so on
a uniform grid $t_k = k h$ it is propagated *exactly* by one matrix,
$e_{k+1} = \Phi\, e_k$ with $\Phi = e^{hJ}$. $\Phi$ is computed once per circuit (a degree-18
Taylor polynomial of $hJ/2^s$ evaluated with five matrix products, then $s$ squarings, with $s$
chosen per circuit from $\|hJ\|_1$), after which every step is one small matrix product whatever
the stiffness of the circuit. Since $J$ commutes with $\Phi$, the derivative $\dot e = J e$ is
propagated by the same product, so each grid interval carries its cubic Hermite interpolant; the
settling time is the last band crossing, located on that interpolant (a sub-grid, then Newton
steps), and `settle_integral` and the resistive energy use the Hermite-corrected trapezoid
rule.

This is the path to use for large batches (Monte Carlo) and for stiff circuits: its cost is a
few dense products per circuit plus `n_steps` matrix-vector products, with no step-size control
and no rejected steps.
"""

import functools

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._circuits import AbstractCircuit
from ._simulate import (
    _DIVERGED,
    _check_linear,
    _check_options,
    _energy,
    _prelude,
    _rel_error,
    _settling_or_flag,
)
from ._solution import RESULTS, Solution
from ._validate import check_flag


_MAX_SQUARINGS = 48
# Sub-intervals searched for the last band crossing inside a grid interval, and Newton steps.
_SUBGRID = 16
# Checkpoints of the squaring loops for reverse mode. Equinox's default for 48 steps (9) costs
# more in buffer traffic than it saves in recomputation when, as usual, s is a few squarings:
# measured on N = 16, value_and_grad / forward 3.96 with 4 checkpoints, 5.87 with the default.
_CHECKPOINTS = 4
_POLISH = 4


# Bader, Blanes & Casas, "Computing the matrix exponential with an optimized Taylor polynomial
# approximation", Mathematics 7 (2019) 1174: the degree-18 Taylor polynomial in five products,
# y = q61 + (q62 + q91) q91 with q91 = q31 q64 + q63, each q a combination of I, A, A^2, A^3
# and A^6 (rows below: coefficients of I, A, A^2, A^3, A^6). Their backward-error bounds on
# ||A||_1 (float32 3.01, float64 1.09) are used as theta. The expansion is checked against
# 1/k! in the tests.
_Q31 = (
    0.0,
    -0.100365581030144620014614939405,
    -0.00802924648241156960116919515244,
    -0.000892138498045729955685466128049,
    0.0,
)
_Q6 = (
    (
        0.0,
        0.397849749499645076145196127710,
        1.36783778460411719922523706878,
        0.498289622525382677556858817262,
        -0.000637898194594723309241550056492,
    ),
    (
        -10.9676396052962062593517462675,
        1.68015813878906197182785401725,
        0.0571779846478865512702871713225,
        -0.00698210122488052084290466483802,
        0.0000334975017086070538313367340668,
    ),
    (
        -0.0904316832390810561971468877018,
        -0.0676404519071381907560079900380,
        0.0675961301770459646082799195079,
        0.0295552570429315527426069182242,
        -0.0000139180257516060701124739979344,
    ),
    (
        0.0,
        0.0,
        -0.0923364619367118592764570775143,
        -0.0169364939002081717191385115723,
        -0.0000140086798182036159794363205726,
    ),
)
_THETA18 = {np.dtype("float32"): 3.0, np.dtype("float64"): 1.09}


def _taylor18(a):
    """$\\sum_{k=0}^{18} A^k/k!$ in five matrix products (Bader, Blanes & Casas): as many
    as a degree-12 Paterson-Stockmeyer evaluation (A², A³, A⁴, then Horner in A⁴; used here
    before), for twice the norm (float32: 3.0 against 1.5), so one squaring fewer; it costs
    more elementwise combinations. Measured on the benchmark circuits under vmap, interleaved
    in one process: N = 16 24.0 vs 25.6 us and N = 64 497 vs 504 us per simulation (best of
    10-12)."""
    eye = jnp.eye(a.shape[-1], dtype=a.dtype)
    a2 = a @ a
    a3 = a2 @ a
    a6 = a3 @ a3

    def comb(c):
        return c[0] * eye + c[1] * a + c[2] * a2 + c[3] * a3 + c[4] * a6

    q31 = comb(_Q31)
    q61, q62, q63, q64 = (comb(c) for c in _Q6)
    q91 = q31 @ q64 + q63
    return q61 + (q62 + q91) @ q91


def _squarings(a):
    theta = _THETA18[np.dtype(a.dtype)]
    norm = jax.lax.stop_gradient(jnp.max(jnp.sum(jnp.abs(a), axis=0)))
    s = jnp.where(norm > theta, jnp.ceil(jnp.log2(jnp.maximum(norm, theta) / theta)), 0)
    return jnp.minimum(s, _MAX_SQUARINGS).astype(jnp.int32)


def expm_scaled(a: Float[Array, "n n"]) -> Float[Array, "n n"]:
    """$e^{A}$ by scaling and squaring with a degree-18 Taylor polynomial.

    The number of squarings $s = \\lceil\\log_2(\\|A\\|_1/\\theta)\\rceil$ is chosen per matrix
    (under `vmap`, the loop runs to the largest $s$ of the batch, masked); the loop is
    checkpointed so reverse-mode differentiation works.
    """
    s = _squarings(a)
    phi = _taylor18(a / (2.0**s).astype(a.dtype))

    def body(carry):
        i, p = carry
        return i + 1, p @ p

    _, phi = eqxi.while_loop(
        lambda c: c[0] < s,
        body,
        (jnp.zeros((), jnp.int32), phi),
        max_steps=_MAX_SQUARINGS,
        kind="checkpointed",
        checkpoints=_CHECKPOINTS,
    )
    return phi


def _matvec2(m, ed):
    """`m @ ed` for `ed` of shape (states, 2), as two matrix-vector products: under vmap a
    (states x 2) product becomes one small GEMM call per circuit on XLA:CPU (10x slower)."""
    return jnp.stack([m @ ed[:, 0], m @ ed[:, 1]], axis=1)


def _hermite_integral(f0, g0, f1, g1, h):
    """Hermite-corrected trapezoid rule: exact for cubics, error $-h^5 f^{(4)}/720$."""
    return h / 2 * (f0 + f1) + h * h / 12 * (g0 - g1)


def _propagator_with_head(jac, h, ed0, quad):
    """$\\Phi = e^{hJ}$, and $\\int_0^h q\\,dt$ along the trajectory from `ed0`.

    The integral over the first interval is taken on the geometric grid
    $0, \\delta, 2\\delta, 4\\delta, \\dots, h$ that the squarings visit anyway
    ($\\delta = h/2^s$, $\\|\\delta J\\|_1 \\le \\theta$), so the fast modes that the input step
    excites, which on a stiff circuit decay within this interval, are resolved.
    """
    a = h * jac
    s = _squarings(a)
    scale = (2.0**s).astype(a.dtype)
    phi = _taylor18(a / scale)
    ed1 = _matvec2(phi, ed0)
    head = _hermite_integral(*quad(ed0), *quad(ed1), h / scale)

    def body(carry):
        i, p, ed, length, acc = carry
        ed_next = _matvec2(p, ed)  # e(2t) = Phi_t e(t)
        acc = acc + _hermite_integral(*quad(ed), *quad(ed_next), length)
        return i + 1, p @ p, ed_next, 2 * length, acc

    _, phi, _, _, head = eqxi.while_loop(
        lambda c: c[0] < s,
        body,
        (jnp.zeros((), jnp.int32), phi, ed1, h / scale, head),
        max_steps=_MAX_SQUARINGS,
        kind="checkpointed",
        checkpoints=_CHECKPOINTS,
    )
    return phi, head


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _trajectory(phi, e0, n_steps):
    """$e_k = \\Phi^k e_0$ for $k = 0..n$, shape `(n + 1, states)`: one matrix-vector product
    per step.

    Its JVP is written so that reverse mode stays cheap: the tangent obeys
    $\\dot e_{k+1} = \\Phi \\dot e_k + \\dot\\Phi e_k$, and the terms $\\dot\\Phi e_k$ of all
    steps are one matrix product outside the loop. Transposed, the loop is then a backward sweep of
    products with $\\Phi^T$ alone, and $\\bar\\Phi = \\sum_k \\bar u_k e_k^T$ one product after it,
    instead of a rank-one update of $\\bar\\Phi$ inside every step (measured on N = 16 under
    vmap: the trajectory's gradient takes about half the time).
    """

    def step(e, _):
        e_next = phi @ e
        return e_next, e_next

    _, traj = jax.lax.scan(step, e0, None, length=n_steps)
    return jnp.concatenate([e0[None], traj], axis=0)


@_trajectory.defjvp
def _trajectory_jvp(n_steps, primals, tangents):
    phi, e0 = primals
    dphi, de0 = tangents
    traj = _trajectory(phi, e0, n_steps)
    drive = traj[:-1] @ dphi.T  # (n_steps, states): dPhi e_k for every step at once

    def step(d, u):
        d_next = phi @ d + u
        return d_next, d_next

    _, dtraj = jax.lax.scan(step, de0, drive)
    return traj, jnp.concatenate([de0[None], dtraj], axis=0)


def simulate_expm(
    circuit: AbstractCircuit,
    *,
    tol: float | Float[Array, ""] = 1e-3,
    t_max: float | Float[Array, ""] | None = None,
    n_steps: int = 64,
    save: bool = False,
    stability: bool = True,
    energy: bool = True,
    throw: bool = True,
) -> Solution:
    r"""Transient of a linear circuit by its exact propagator on a uniform grid.

    The grid has `n_steps` intervals over $[0, t_\max]$; the outputs at the grid points are
    exact (to the dtype's precision) for any step size and any stiffness. The settling time is
    found on the cubic Hermite interpolant of the last interval in which an output leaves
    the band (interpolation error $\sim (h r)^4/384$ of the band for a mode of rate $r$, i.e.
    below $10^{-5}$ relative for the default grid). A band excursion that starts and ends
    between two grid points is not seen: raise `n_steps` for strongly oscillatory circuits.

    **Arguments:**

    - `circuit`: any linear circuit ([`amcdyn.INV`][], [`amcdyn.MVM`][], ...).
    - `tol`: relative settling band $\varepsilon$.
    - `t_max`: end time (s). Default as [`amcdyn.simulate`][] (needs the eigenvalues, so it
      forces `stability=True`). Pass it in large batches: the propagator itself is far cheaper
      than a dense `eig`.
    - `n_steps`: grid intervals (an int >= 4).
    - `save`: keep the waveform at the `n_steps + 1` grid points in `ts`/`vs`.
    - `stability`: compute the eigenvalues of $J$ for the stability verdict. Without it, a
      diverging transient is still reported `unstable` (a deviation above 1000 full scales).
    - `energy`: integrate the resistive power along the trajectory (its value and time
      derivative at every grid point: about a third of the cost of a small circuit). With
      `False`, `Solution.energy` is NaN (not computed) and every other field is unchanged.
    - `throw`: raise on any outcome other than `settled`.

    **Returns:** a [`amcdyn.Solution`][] with `num_steps = n_steps`; `v_final` is the state at
    $t_\max$.
    """
    _check_linear(circuit, "simulate_expm")
    _check_options(tol, t_max, 0)
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 4:
        raise ValueError(f"`n_steps` must be an int >= 4, got {n_steps!r}")
    check_flag("energy", energy)
    return _simulate_expm(
        circuit,
        jnp.asarray(tol),
        None if t_max is None else jnp.asarray(t_max),
        n_steps,
        save,
        stability or t_max is None,
        energy,
        throw,
    )


def _hermite(e0, d0, e1, d1, h, theta):
    """Cubic Hermite interpolant at fraction `theta` of an interval of length `h`."""
    t2 = theta * theta
    t3 = t2 * theta
    h00 = 2 * t3 - 3 * t2 + 1
    h10 = t3 - 2 * t2 + theta
    h01 = -2 * t3 + 3 * t2
    h11 = t3 - t2
    return h00 * e0 + h10 * h * d0 + h01 * e1 + h11 * h * d1


def _hermite_dtheta(e0, d0, e1, d1, h, theta):
    """d/dtheta of `_hermite`."""
    t2 = theta * theta
    return (
        (6 * t2 - 6 * theta) * e0
        + (3 * t2 - 4 * theta + 1) * h * d0
        + (-6 * t2 + 6 * theta) * e1
        + (3 * t2 - 2 * theta) * h * d1
    )


@eqx.filter_jit
def _simulate_expm(circuit, tol, t_max, n_steps, save, stability, energy, throw):
    (dyn, dtype, tol, y_ss, v_ss, fs_safe, w_ref, lam, maxre, tau_slow, osc, stable, t_end) = (
        _prelude(circuit, tol, t_max, stability)
    )
    n_out = dyn.n_outputs
    jac = dyn.jacobian() / w_ref  # scaled time tau = w_ref t
    h = t_end * w_ref / n_steps  # scaled step
    band = tol * fs_safe

    # Carry [e, J e] (states x 2): J commutes with Phi, so one product advances both.
    e0 = -y_ss
    ed0 = jnp.stack([e0, jac @ e0], axis=1)

    def dev(ed):
        return jnp.max(jnp.abs(ed[:n_out, 0]))

    # Resistive power above its equilibrium value, q(y* + e) - q*, and its time derivative:
    # one forward-mode pass of q per point (no dense quadratic form is built).
    q_ss = circuit.resistive_power(y_ss) if energy else None

    def quad(ed):
        # Integrands [|C e|^2 (, q - q*)] and their derivatives in scaled time.
        e, d = ed[:, 0], ed[:, 1]
        ce, cd = e[:n_out], d[:n_out]
        f, g = [jnp.sum(ce * ce)], [2 * jnp.sum(ce * cd)]
        if energy:
            q, dq = jax.jvp(circuit.resistive_power, (y_ss + e,), (d,))
            f.append(q - q_ss)
            g.append(dq)
        return jnp.stack(f), jnp.stack(g)

    def advance(ed):
        return _matvec2(phi, ed)

    phi, head = _propagator_with_head(jac, h, ed0, quad)

    # The loop only propagates e (one matrix-vector product per step); everything else,
    # the derivatives J e included (one matrix product), is computed afterwards on the whole
    # trajectory at once: a few large operations instead of many small ones per step.
    traj_e = _trajectory(phi, e0, n_steps)  # (n_steps + 1, states)
    traj = jnp.stack([traj_e, traj_e @ jac.T], axis=2)  # (n_steps + 1, states, 2)
    ed_end = traj[-1]
    devs = jnp.max(jnp.abs(traj[:, :n_out, 0]), axis=1)
    max_dev = jnp.max(devs)
    ks = jnp.arange(n_steps + 1)
    last_k = jnp.max(jnp.where(devs > band, ks, -1))
    last_ed = traj[jnp.clip(last_k, 0, n_steps)]
    # Integrands on the grid; interval k by Hermite, the first one on the geometric grid.
    f_grid, g_grid = jax.vmap(quad)(traj)
    pieces = _hermite_integral(f_grid[:-1], g_grid[:-1], f_grid[1:], g_grid[1:], h)
    pieces = pieces.at[0].set(head)
    integral = jnp.sum(pieces, axis=0)
    last_int = jnp.sum(jnp.where((ks[:-1] < last_k)[:, None], pieces, 0), axis=0)

    # Last exit lies in [t_k, t_{k+1}], k = last_k: solve max_i |H_i(theta)| = band.
    nxt = advance(last_ed)
    e_a, d_a = last_ed[:n_out, 0], last_ed[:n_out, 1]
    e_b, d_b = nxt[:n_out, 0], nxt[:n_out, 1]

    def excess(theta):
        return jnp.max(jnp.abs(_hermite(e_a, d_a, e_b, d_b, h, theta))) - band

    # Locate the last crossing on a sub-grid of the interval (one vectorized evaluation), then
    # polish it by Newton steps on the cubic (bracketed, so they cannot leave the sub-interval).
    sg = jax.lax.stop_gradient
    thetas = jnp.linspace(0, 1, _SUBGRID + 1, dtype=dtype)
    ex = jax.vmap(excess)(sg(thetas))
    j = jnp.clip(jnp.max(jnp.where(ex > 0, jnp.arange(_SUBGRID + 1), 0)), 0, _SUBGRID - 1)
    lo, hi = thetas[j], thetas[j + 1]
    ex_lo, ex_hi = ex[j], ex[j + 1]
    theta_b = lo + (hi - lo) * ex_lo / jnp.where(ex_lo != ex_hi, ex_lo - ex_hi, 1)

    def polish(_, theta):
        hb = _hermite(e_a, d_a, e_b, d_b, h, theta)
        i = jnp.argmax(jnp.abs(hb))
        slope = jnp.sign(hb[i]) * _hermite_dtheta(e_a, d_a, e_b, d_b, h, theta)[i]
        step = (jnp.abs(hb[i]) - band) / jnp.where(slope != 0, slope, 1)
        return jnp.clip(theta - step, lo, hi)

    theta_b = sg(jax.lax.fori_loop(0, _POLISH, polish, sg(theta_b)))
    # Implicit-function gradient through the interpolant: excess(theta*, p) = 0.
    g = excess(theta_b)
    hb = sg(_hermite(e_a, d_a, e_b, d_b, h, theta_b))
    i_max = jnp.argmax(jnp.abs(hb))
    dg = jnp.sign(hb[i_max]) * sg(_hermite_dtheta(e_a, d_a, e_b, d_b, h, theta_b))[i_max]
    theta_s = theta_b - (g - sg(g)) / jnp.where(dg != 0, dg, 1)
    t_cross = (last_k.astype(dtype) + theta_s) * h
    t_settle = jnp.where(last_k < 0, jnp.zeros((), dtype), t_cross) / w_ref

    y_final = y_ss + ed_end[:, 0]
    v_final = dyn.outputs(y_final)
    x = circuit.decode(v_final)
    x_exact = circuit.exact_solution()
    rel_error, bits = _rel_error(x, x_exact)
    finite = (
        jnp.all(jnp.isfinite(y_final)) & jnp.all(jnp.isfinite(phi)) & jnp.all(jnp.isfinite(x_exact))
    )
    unstable = (~stable) | (max_dev > _DIVERGED * fs_safe)
    settled = last_k < n_steps
    result = RESULTS.where(
        ~finite,
        RESULTS.nonfinite,
        RESULTS.where(
            unstable,
            RESULTS.unstable,
            RESULTS.where(settled, RESULTS.settled, RESULTS.not_settled),
        ),
    )
    diverged = (result == RESULTS.unstable) | (result == RESULTS.nonfinite)
    rel_error = jnp.where(diverged, jnp.nan, rel_error)
    bits = jnp.where(diverged, jnp.nan, bits)
    # Resistive energy over [0, t_s]: q* t_s plus the integral of q - q*, on the grid up to
    # t_k and on the interpolant over [t_k, t_s]. Without `energy`, NaN.
    if energy:
        e_s = _hermite(last_ed[:, 0], last_ed[:, 1], nxt[:, 0], nxt[:, 1], h, theta_s)
        ed_s = jnp.stack([e_s, jac @ e_s], axis=1)
        part = _hermite_integral(*quad(last_ed), *quad(ed_s), theta_s * h)[1]
        tau_s = jnp.where(last_k < 0, 0, t_cross)
        e_settle = jnp.where(last_k < 0, 0, (q_ss * tau_s + last_int[1] + part) / w_ref)
    else:
        e_settle = jnp.asarray(jnp.nan, dtype)
    power, e_solve = _energy(circuit, t_settle, result, e_settle)
    t_settle = _settling_or_flag(t_settle, result)
    if save:
        ts = jnp.linspace(0, 1, n_steps + 1, dtype=dtype) * t_end
        vs = v_ss[None, :] + traj[:, :n_out, 0]
    else:
        ts = jnp.zeros((0,), dtype)
        vs = jnp.zeros((0, n_out), dtype)
    out = Solution(
        ts=ts,
        vs=vs,
        v_final=v_final,
        v_steady=v_ss,
        solution=x,
        exact=x_exact,
        rel_error=rel_error,
        bits=bits,
        settling_time=t_settle,
        settle_integral=integral[0] / (w_ref * fs_safe**2),
        t_max=t_end,
        tol=tol,
        eigenvalues=lam,
        max_real_eig=maxre,
        slowest_time_constant=tau_slow,
        oscillatory=osc,
        stable=stable & ~unstable,
        result=result,
        num_steps=jnp.asarray(n_steps, jnp.int32),
        power=power,
        energy=e_solve,
    )
    if throw:
        out = result.error_if(out, result != RESULTS.settled)
    return out
