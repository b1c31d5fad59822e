r"""Generalized-inverse circuits: least squares / pseudoinverse (GINV) and ridge regression.

Both are two-stage closed loops of two crossbars that store the same real matrix $A$
(amc-physics.md §4):

- a bank of $n_1$ transimpedance amplifiers (TIAs, feedback conductance $G_f$), whose
  inverting inputs sum the currents of array 1, and
- a bank of $n_2$ *non-inverting* op-amps, whose non-inverting inputs sit on the summing
  nodes of array 2 (inverting inputs grounded).

The TIA inverts once; the non-inverting second stage does not, so the loop has exactly one
inversion (negative feedback). Two inverting stages give positive feedback and the circuit
latches (checked: `tests/test_ginv.py::test_inverting_second_stage_latches`).

Let $B$ ($n_1\times n_2$) be the matrix seen by the TIAs: $B = G_0 A$ for the left inverse
($A$ tall, $P\times Q$, $n_1 = P$, $n_2 = Q$) and $B = G_0 A^\top$ for the right inverse
($A$ wide, $K\times M$, $n_1 = M$, $n_2 = K$). Signed entries are split, $B = B^+ - B^-$;
$B^-$ is driven by inverted copies $\bar w = -w$ and $\bar v = -v$ (single-pole op-amp
inverters with two equal resistors $1/G_0$, or ideal). With TIA outputs $v$ and second-stage
outputs $w$ (volts),

$$r_i = \frac{\sum_j B^+_{ij} w_j + \sum_j B^-_{ij}\bar w_j + G_{f,i} v_i + I_{1,i}}{D_{1,i}},
  \qquad \dot v_i = -\omega_0 v_i - \omega_T r_i,$$
$$s_j = \frac{\sum_i B^+_{ij} v_i + \sum_i B^-_{ij}\bar v_i + G_{\lambda,j}\bar w_j + I_{2,j}}
  {D_{2,j}},\qquad \dot w_j = -\omega_0 w_j + \omega_T s_j,$$
$$\dot{\bar w}_j = -\omega_0'\bar w_j - \omega_T'\frac{w_j + \bar w_j}{2},\qquad
  \dot{\bar v}_i = -\omega_0'\bar v_i - \omega_T'\frac{v_i + \bar v_i}{2},$$

with $D_{1,i} = \sum_j (B^+_{ij} + B^-_{ij}) + G_{f,i}$ and
$D_{2,j} = \sum_i (B^+_{ij} + B^-_{ij}) + G_{\lambda,j}$ (all conductance on each node, S).
$I_1$, $I_2$ are the input currents (A), $G_\lambda$ the ridge conductance (S, 0 for GINV).

**Ideal limit** ($A_0,\omega_T\to\infty$, ideal inverters): $r = 0$ gives
$v = -(Bw + I_1)/G_f$ and $s = 0$ gives $B^\top v - G_\lambda w + I_2 = 0$, so

$$(B^\top B + G_f G_\lambda) w = G_f I_2 - B^\top I_1.$$

- Left inverse: $I_1 = G_0 b$, $I_2 = 0$: $w = -(A^\top A + \lambda)^{-1} A^\top b$.
- Right inverse: $I_1 = 0$, $I_2 = G_0 s$: $v = -A^\top(A A^\top + \lambda)^{-1} s$.
- $\lambda = G_f G_\lambda / G_0^2$ (ridge); $G_f$ and $G_0$ cancel otherwise.

**Finite gain** (exact, ideal inverters): with $E = \mathrm{diag}(G_f + D_1/A_0)$,
$w^* = -(B^\top E^{-1} B + G_\lambda + D_2/A_0)^{-1}(B^\top E^{-1} I_1 - I_2)$ and
$v^* = -E^{-1}(B w^* + I_1)$; op-amp inverters multiply $B^-$ by
$\beta = 1/(1 + 2/A_0')$ (they settle to $-\beta$ times their input).

**Stability and speed** (ideal or differential sign handling). With uniform node sums
($D_1 = d_1 I$, $D_2 = d_2 I$, e.g. a $\pm1$ matrix), ideal inverters and equal op-amps, $v$
and $w$ decouple along the singular pairs $(\sigma_k, u_k, x_k)$ of $A$: each pair gives

$$(s+\omega_0)(s + \omega_0 + \alpha) + \beta_k = 0,\qquad \alpha = \frac{\omega_T G_f}{d_1},
  \quad \beta_k = \frac{\omega_T^2 G_0^2\sigma_k^2}{d_1 d_2},$$

and the $n_1 - n_2$ directions with $B^\top v = 0$ decay at $\omega_0 + \alpha$. Every root
has a negative real part whatever the signs of $A$: the loop is stable for any full-rank $A$
and any $G_f$. The slow root of pair $k$ is

$$r_k = \omega_0 + \frac{\alpha}{2}\Bigl(1 - \sqrt{1 - 4\beta_k/\alpha^2}\Bigr)
      \approx \omega_0 + \frac{\omega_T G_0^2\sigma_k^2}{G_f d_2}\Bigl(1 + \frac{\beta_k}
      {\alpha^2}\Bigr)\qquad (4\beta_k \ll \alpha^2),$$

so the slowest decay rate follows $\sigma_{\min}(A)^2$. For general node sums the same holds
in the ideal-TIA limit: $r = \omega_0 + (\omega_T/G_f)\,\mu(1 + \delta)$ with
$\mu = \lambda_{\min}(D_2^{-1}B^\top B) \in [G_0^2\sigma_{\min}^2/\max D_2,\,
G_0^2\sigma_{\min}^2/\min D_2]$ and the TIA-pole correction
$\delta = x^\top B^\top D_1 B x/(G_f^2\, x^\top D_2 x)$ ($x$ its eigenvector). A pair with
$4\beta_k > \alpha^2$ is underdamped and decays at $\omega_0 + \alpha/2$: a small $G_f$
speeds up the slow pair but makes the fast ones ring.

**Op-amp inverters** (`inverters="opamp"`) put a third pole ($\approx\omega_T'/2$) in the loop:
at small $G_f$ the fast pairs ring up and the circuit latches. Stable (numerically, 145 random
matrices of every sign pattern, worst case 1.04x) when
$G_f \ge 2 (\omega_T/\omega_T') G_0\sigma_{\max}^2/\min_j(\sum_i |T_{ij}|)$, with $T$ the tall
one of $A$, $A^\top$. The differential wiring (`inverters="differential"`: $B^-$ on the other
input of each op-amp, both inputs balanced to $D = \max(D^+, D^-)$ by a conductance to ground)
needs no inverters, keeps the two-pole loop, and its smaller $D$ makes it faster.

**Choosing $G_f$** (the default, `g_f=None`): critical damping of the slowest pair,
$\alpha^2 = 4\beta_{\min}$, i.e. $G_f^2 = 4 G_0^2\sigma_{\min}^2\,\bar d_1/\bar d_2$ with the mean
node sums ($\bar d_1$ includes $G_f$; a quadratic), which is exact for uniform sums; every
pair then decays at least at $\omega_0 + \omega_T G_0\sigma_{\min}/\sqrt{d_1 d_2}$. For op-amp
inverters, at least 1.5 times the stability rule above. Ridge uses $\sigma_{\min}^2 + \lambda$.
"""

from typing import ClassVar, Literal

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._circuits import V0, AbstractCircuit, AbstractDynamics
from ._linalg import solve
from ._opamp import OpAmp
from ._validate import check_finite, check_ndim, check_nonnegative, check_positive, is_concrete


_Bank = Literal["opamp", "ideal", "none"]


class _GINVDynamics(AbstractDynamics):
    """The two-stage loop of the module docstring. State order: the output bank first (`w`
    for the left inverse, `v` for the right), then the other bank, then the op-amp inverters
    $\\bar w$ and $\\bar v$ (when real)."""

    bp1: Float[Array, "n1 n2"]  # B+ / D1
    bn1: Float[Array, "n1 n2"]  # B- / D1
    f1: Float[Array, "*n1"]  # G_f / D1
    c1: Float[Array, " n1"]  # I1 / D1 (V)
    bp2: Float[Array, "n2 n1"]  # B+^T / D2
    bn2: Float[Array, "n2 n1"]  # B-^T / D2
    l2: Float[Array, "*n2"]  # G_lambda / D2
    c2: Float[Array, " n2"]  # I2 / D2 (V)
    tia_w0: Float[Array, "*n1"]
    tia_wt: Float[Array, "*n1"]
    amp_w0: Float[Array, "*n2"]
    amp_wt: Float[Array, "*n2"]
    inv_w0: Float[Array, "*m"] | None
    inv_wt: Float[Array, "*m"] | None
    w_bank: _Bank = eqx.field(static=True)
    v_bank: _Bank = eqx.field(static=True)
    output: Literal["w", "v"] = eqx.field(static=True)
    n_states: int = eqx.field(static=True)
    n_outputs: int = eqx.field(static=True)

    @property
    def dtype(self):
        return self.bp1.dtype

    @property
    def _sizes(self):
        return self.bp1.shape

    def _unpack(self, y):
        n1, n2 = self._sizes
        if self.output == "w":
            w, v, k = y[:n2], y[n2 : n2 + n1], n1 + n2
        else:
            v, w, k = y[:n1], y[n1 : n1 + n2], n1 + n2
        wbar = vbar = None
        if self.w_bank == "opamp":
            wbar, k = y[k : k + n2], k + n2
        elif self.w_bank == "ideal":
            wbar = -w
        if self.v_bank == "opamp":
            vbar = y[k : k + n1]
        elif self.v_bank == "ideal":
            vbar = -v
        return v, w, wbar, vbar

    def _inverter(self, x, xbar):
        return -self.inv_w0 * xbar - self.inv_wt * (x + xbar) / 2

    def vector_field(self, y):
        v, w, wbar, vbar = self._unpack(y)
        r = self.bp1 @ w + self.f1 * v + self.c1
        s = self.bp2 @ v + self.c2
        if wbar is not None:
            r = r + self.bn1 @ wbar
            s = s + self.l2 * wbar
        if vbar is not None:
            s = s + self.bn2 @ vbar
        dv = -self.tia_w0 * v - self.tia_wt * r
        dw = -self.amp_w0 * w + self.amp_wt * s
        parts = [dw, dv] if self.output == "w" else [dv, dw]
        if self.w_bank == "opamp":
            parts.append(self._inverter(w, wbar))
        if self.v_bank == "opamp":
            parts.append(self._inverter(v, vbar))
        return jnp.concatenate(parts)

    def _slices(self):
        """State index ranges of v, w, wbar, vbar (None when not a state)."""
        n1, n2 = self._sizes
        if self.output == "w":
            sw, sv, k = slice(0, n2), slice(n2, n1 + n2), n1 + n2
        else:
            sv, sw, k = slice(0, n1), slice(n1, n1 + n2), n1 + n2
        swb = svb = None
        if self.w_bank == "opamp":
            swb, k = slice(k, k + n2), k + n2
        if self.v_bank == "opamp":
            svb = slice(k, k + n1)
        return sv, sw, swb, svb

    def jacobian(self):
        n1, n2 = self._sizes
        sv, sw, swb, svb = self._slices()
        ones1, ones2 = jnp.ones(n1, self.dtype), jnp.ones(n2, self.dtype)
        tia_wt = (self.tia_wt * ones1)[:, None]
        amp_wt = (self.amp_wt * ones2)[:, None]
        l2 = self.l2 * ones2
        jac = jnp.zeros((self.n_states, self.n_states), self.dtype)
        jac = jac.at[sv, sv].set(-jnp.diag((self.tia_w0 + self.tia_wt * self.f1) * ones1))
        jac = jac.at[sv, sw].set(-tia_wt * self.bp1)
        jac = jac.at[sw, sv].set(amp_wt * self.bp2)
        jac = jac.at[sw, sw].set(-jnp.diag(self.amp_w0 * ones2))
        # Inverted copies: their own states (op-amp inverters), or -x folded into x's column.
        if self.w_bank != "none":
            target = swb if self.w_bank == "opamp" else sw
            sign = 1.0 if self.w_bank == "opamp" else -1.0
            jac = jac.at[sv, target].add(-sign * tia_wt * self.bn1)
            jac = jac.at[sw, target].add(sign * jnp.diag(self.amp_wt * l2))
        if self.v_bank != "none":
            target = svb if self.v_bank == "opamp" else sv
            sign = 1.0 if self.v_bank == "opamp" else -1.0
            jac = jac.at[sw, target].add(sign * amp_wt * self.bn2)
        for x, xb, n in ((sw, swb, n2), (sv, svb, n1)):
            if xb is not None:
                half = self.inv_wt * jnp.ones(n, self.dtype) / 2
                jac = jac.at[xb, x].set(-jnp.diag(half))
                jac = jac.at[xb, xb].set(-jnp.diag(self.inv_w0 + half))
        return jac

    def _beta(self, bank):
        # An inverter settles to -beta times its input: beta = 1 (ideal), 1/(1 + 2/A0') (op-amp).
        if bank == "opamp":
            return (self.inv_wt / 2) / (self.inv_w0 + self.inv_wt / 2)
        return jnp.ones((), self.dtype) if bank == "ideal" else jnp.zeros((), self.dtype)

    def steady_state(self):
        # Eliminate the inverters (xbar = -beta x) and the TIAs (v = -(B_eff w + c1)/e1): one
        # n2 x n2 solve instead of the dense n_states solve.
        n1, n2 = self._sizes
        ones1, ones2 = jnp.ones(n1, self.dtype), jnp.ones(n2, self.dtype)
        beta_w, beta_v = self._beta(self.w_bank), self._beta(self.v_bank)
        b_eff = self.bp1 - beta_w * self.bn1
        c_eff = self.bp2 - beta_v * self.bn2
        e1 = (self.f1 + self.tia_w0 / self.tia_wt) * ones1
        diag = (self.l2 * beta_w + self.amp_w0 / self.amp_wt) * ones2
        m = c_eff @ (b_eff / e1[:, None]) + jnp.diag(diag)
        w = solve(m, self.c2 - c_eff @ (self.c1 / e1))
        v = -(b_eff @ w + self.c1) / e1
        parts = [w, v] if self.output == "w" else [v, w]
        if self.w_bank == "opamp":
            parts.append(-beta_w * w)
        if self.v_bank == "opamp":
            parts.append(-beta_v * v)
        return jnp.concatenate(parts)


# ------------------------------------------------------------------------------------------
# construction helpers shared by GINV and Ridge


def _check_mode(mode):
    if mode not in ("left", "right"):
        raise ValueError(f"`mode` must be 'left' or 'right', got {mode!r}")


def _check_inverters(inverters):
    if inverters not in ("opamp", "ideal", "differential"):
        raise ValueError(
            f"`inverters` must be 'opamp', 'ideal' or 'differential', got {inverters!r}"
        )


def _check_problem(a, b, mode, *, need_full_rank: bool):
    check_ndim("a", a, 2)
    p, q = np.shape(a)
    if p == 0 or q == 0:
        raise ValueError(f"`a` must not be empty, got shape {(p, q)}")
    if mode == "left" and p < q:
        raise ValueError(
            f"`a` must be tall (rows >= columns) for mode='left', got shape {(p, q)}; "
            "use mode='right' for the minimum-norm solution of a wide matrix"
        )
    if mode == "right" and p > q:
        raise ValueError(
            f"`a` must be wide (rows <= columns) for mode='right', got shape {(p, q)}; "
            "use mode='left' for the least-squares solution of a tall matrix"
        )
    check_finite("a", a)
    check_ndim("b", b, 1)
    if np.shape(b)[0] != p:
        raise ValueError(
            f"`b` has length {np.shape(b)[0]}, but `a` has {p} rows (mode={mode!r} needs "
            f"length {p})"
        )
    check_finite("b", b)
    if need_full_rank and is_concrete(a):
        rank = np.linalg.matrix_rank(np.asarray(a, dtype=float))
        if rank < min(p, q):
            kind = "column" if mode == "left" else "row"
            raise ValueError(
                f"`a` is rank-deficient (rank {rank} < {min(p, q)}): the {mode} pseudoinverse "
                f"needs full {kind} rank, otherwise the loop has a zero eigenvalue and no unique "
                "state to settle to (use Ridge with lam > 0)"
            )


def _check_scalar(name, value, *, allow_inf=False):
    if np.ndim(value) != 0:
        raise ValueError(
            f"`{name}` must be a scalar (set per-amplifier values on the built circuit with "
            f"eqx.tree_at), got shape {np.shape(value)}"
        )
    check_positive(name, value, allow_inf=allow_inf)


def _check_g_f(g_f, n1):
    if g_f is None:
        return
    if np.ndim(g_f) > 0 and np.shape(g_f) != (n1,):
        raise ValueError(
            f"`g_f` must be a scalar or have one value per TIA, shape ({n1},); got shape "
            f"{np.shape(g_f)}"
        )
    check_positive("g_f", g_f)


def _amps(a0, f_gbw, inverter_a0, inverter_f_gbw):
    _check_scalar("a0", a0, allow_inf=True)
    _check_scalar("f_gbw", f_gbw)
    if inverter_a0 is not None:
        _check_scalar("inverter_a0", inverter_a0, allow_inf=True)
    if inverter_f_gbw is not None:
        _check_scalar("inverter_f_gbw", inverter_f_gbw)
    amp = OpAmp(a0, f_gbw)
    inverter = OpAmp(
        a0 if inverter_a0 is None else inverter_a0,
        f_gbw if inverter_f_gbw is None else inverter_f_gbw,
    )
    return amp, inverter


# Safety factor on the op-amp-inverter stability rule G_f >= 2 (f/f') G0 sigma_max^2 / min D2:
# over 145 random matrices (Gaussian, +-1, all-negative, sparse, 1 x 1 .. 32 x 8, both modes)
# the smallest stable G_f was at most 1.04 times the rule, so 1.5 leaves a margin for the
# worst sign patterns at a ~1/3 cost in speed (the slow rate is ~ 1/G_f).
_OPAMP_INVERTER_MARGIN = 1.5


def _default_g_f(a, mode, g0, inverters, signed, amp, inverter, lam=0.0):
    """The default TIA feedback (S): critical damping of the slowest singular pair, and for
    op-amp inverters at least the stability rule (module docstring, "Choosing G_f"). For Ridge
    the slowest pair has sigma_min^2 + lam (G_f G_lambda = lam G0^2 adds to every mode)."""
    tall = jnp.abs(a if mode == "left" else a.T)  # B / G0 up to signs, (n1, n2)
    sv = jnp.linalg.svd(a, compute_uv=False)
    neg = a < 0 if mode == "left" else a.T < 0
    pos_t, neg_t = jnp.where(neg, 0, tall), jnp.where(neg, tall, 0)
    if inverters == "differential":
        s1 = jnp.mean(jnp.maximum(pos_t.sum(1), neg_t.sum(1)))
        d2 = jnp.mean(jnp.maximum(pos_t.sum(0), neg_t.sum(0)))
    else:
        s1, d2 = jnp.mean(tall.sum(1)), jnp.mean(tall.sum(0))
    # G_f^2 = c (s1 + G_f), c = 4 sigma_min^2 / d2 (units of G0): alpha^2 = 4 beta_min for
    # uniform node sums (exact for a +-1 matrix), slightly underdamped otherwise.
    c = 4 * (sv[-1] ** 2 + lam) / d2
    g_f = (c + jnp.sqrt(c**2 + 4 * c * s1)) / 2
    if inverters == "opamp" and signed:
        rule = 2 * (amp.f_gbw / inverter.f_gbw) * sv[0] ** 2 / jnp.min(tall.sum(0))
        g_f = jnp.maximum(g_f, _OPAMP_INVERTER_MARGIN * rule)
    return g0 * g_f


def _is_signed(a) -> bool:
    # Traced matrices may have negative entries: keep the negative arrays and inverters.
    return not is_concrete(a) or bool(np.any(np.asarray(a) < 0))


def _check_fields(circuit):
    shape = np.shape(circuit.a)
    for name in ("g_pos", "g_neg", "g_pos_2", "g_neg_2"):
        g = getattr(circuit, name)
        if g is None:
            continue
        if np.shape(g) != shape:
            raise ValueError(f"`{name}` must have shape {shape}, got {np.shape(g)}")
        check_nonnegative(name, g)
    _check_mode(circuit.mode)
    _check_inverters(circuit.inverters)
    for name in ("amp", "tia", "inverter"):
        amp = getattr(circuit, name)
        # The two-stage loop is modelled with single-pole, offset-free op-amps only.
        if amp.f_p2 is not None:
            raise ValueError(f"`{name}` must be a single-pole OpAmp (f_p2=None) for GINV/Ridge")
        if is_concrete(amp.v_os) and np.any(np.asarray(amp.v_os) != 0):
            raise ValueError(f"`{name}` must have no input offset (v_os=0) for GINV/Ridge")


def _sizes(a, mode):
    p, q = np.shape(a)
    return (p, q) if mode == "left" else (q, p)  # (n1 TIAs, n2 second-stage op-amps)


def _arrays(circuit, v_bank):
    """(B+, B-, C+, C-, I1, I2): array 1 and array 2 as seen by the TIAs, both `(n1, n2)` (S),
    and the input currents into the TIA and second-stage summing nodes (A)."""
    # Array 2 is a physically separate copy of A (its own devices): `g_pos_2`/`g_neg_2` when
    # given (programmed independently, e.g. by Monte Carlo or a macro), else array 1's values.
    gp2 = circuit.g_pos if circuit.g_pos_2 is None else circuit.g_pos_2
    gn2 = circuit.g_neg if circuit.g_neg_2 is None else circuit.g_neg_2
    if circuit.mode == "left":
        bp, bn = circuit.g_pos, circuit.g_neg
        cp, cn = gp2, gn2
    else:
        bp, bn = circuit.g_pos.T, circuit.g_neg.T
        cp, cn = gp2.T, gn2.T
    n1, n2 = bp.shape
    dtype = bp.dtype
    i_in = circuit.g0 * circuit.b * V0
    zeros1, zeros2 = jnp.zeros(n1, dtype), jnp.zeros(n2, dtype)
    i1, i2 = (i_in, zeros2) if circuit.mode == "left" else (zeros1, i_in)
    if v_bank == "none":
        bn = jnp.zeros_like(bn)  # unsigned (a non-negative matrix): no negative arrays
        cn = jnp.zeros_like(cn)
    return bp, bn, cp, cn, i1, i2


def _dynamics(circuit, g_lambda, w_bank, v_bank) -> _GINVDynamics:
    """The loop's ODE for a GINV/Ridge circuit (see the module docstring)."""
    bp, bn, cp, cn, i1, i2 = _arrays(circuit, v_bank)
    n1, n2 = bp.shape
    if circuit.inverters == "differential":
        # B- (and G_lambda) sit on the op-amp's other input; a conductance to ground balances
        # the two inputs to the larger total, so v+ - v- = (sum of signed currents) / D.
        d1 = jnp.maximum(jnp.sum(bp, axis=1) + circuit.g_f, jnp.sum(bn, axis=1))
        d2 = jnp.maximum(jnp.sum(cp, axis=0), jnp.sum(cn, axis=0) + g_lambda)
        w_bank = "ideal" if w_bank == "differential" else w_bank
        v_bank = "ideal" if v_bank == "differential" else v_bank
    else:
        d1 = jnp.sum(bp + bn, axis=1) + circuit.g_f
        d2 = jnp.sum(cp + cn, axis=0) + g_lambda
    inv = circuit.inverter
    real = "opamp" in (w_bank, v_bank)
    n_inv = (n2 if w_bank == "opamp" else 0) + (n1 if v_bank == "opamp" else 0)
    return _GINVDynamics(
        bp1=bp / d1[:, None],
        bn1=bn / d1[:, None],
        f1=circuit.g_f / d1,
        c1=i1 / d1,
        bp2=cp.T / d2[:, None],
        bn2=cn.T / d2[:, None],
        l2=g_lambda / d2,
        c2=i2 / d2,
        tia_w0=circuit.tia.w0,
        tia_wt=circuit.tia.w_t,
        amp_w0=circuit.amp.w0,
        amp_wt=circuit.amp.w_t,
        inv_w0=inv.w0 if real else None,
        inv_wt=inv.w_t if real else None,
        w_bank=w_bank,
        v_bank=v_bank,
        output="w" if circuit.mode == "left" else "v",
        n_states=n1 + n2 + n_inv,
        n_outputs=n2 if circuit.mode == "left" else n1,
    )


def _gbw(circuit, w_bank, v_bank):
    n1, n2 = _sizes(circuit.a, circuit.mode)
    tia = jnp.broadcast_to(circuit.tia.f_gbw, (n1,))
    amp = jnp.broadcast_to(circuit.amp.f_gbw, (n2,))
    parts = [amp, tia] if circuit.mode == "left" else [tia, amp]
    if w_bank == "opamp":
        parts.append(jnp.broadcast_to(circuit.inverter.f_gbw, (n2,)))
    if v_bank == "opamp":
        parts.append(jnp.broadcast_to(circuit.inverter.f_gbw, (n1,)))
    return jnp.concatenate(parts)


def _power(circuit, w_bank, v_bank):
    n1, n2 = _sizes(circuit.a, circuit.mode)
    p = jnp.sum(jnp.broadcast_to(circuit.tia.power(), (n1,)))
    p = p + jnp.sum(jnp.broadcast_to(circuit.amp.power(), (n2,)))
    n_inv = (n2 if w_bank == "opamp" else 0) + (n1 if v_bank == "opamp" else 0)
    return p + n_inv * circuit.inverter.power()


def _device_power(g, x, u, gx):
    # sum_ij g_ij (x_j - u_i)^2 (W) for devices between nodes u_i and drives x_j, expanded so
    # that the cost is the matvec gx = g @ x that the node voltage needs anyway.
    p = jnp.sum(jnp.sum(g, axis=0) * x * x) - 2 * jnp.sum(u * gx)
    return p + jnp.sum(jnp.sum(g, axis=1) * u * u)


def _resistive_power(circuit, g_lambda, w_bank, v_bank, y):
    """Power (W) in every resistor of the GINV/Ridge loop at state `y` (V): both arrays, the
    TIA feedback $G_f$, the ridge conductances $G_\\lambda$, the balance conductances of the
    differential wiring and the op-amp inverters' two resistors. The summing nodes follow
    from KCL with the op-amp outputs given (the op-amp inputs draw no current), not from the
    virtual-ground approximation. The input current sources' own power is not counted. The
    element list is that of `amcdyn._spice_ginv.netlist`."""
    dyn = circuit.dynamics()
    if jnp.shape(y) != (dyn.n_states,):
        raise ValueError(f"`y` must have shape ({dyn.n_states},) (the state), got {jnp.shape(y)}")
    bp, bn, cp, cn, i1, i2 = _arrays(circuit, v_bank)
    v, w, wbar, vbar = dyn._unpack(y)
    g_f, g_inv = circuit.g_f, circuit.g_inv
    if circuit.inverters == "differential":
        # B- on each op-amp's other input (TIA: `rp`, second stage: `sm`); a conductance to
        # ground brings both inputs to the same total D = max(D+, D-).
        pos1, neg1 = jnp.sum(bp, axis=1) + g_f, jnp.sum(bn, axis=1)
        d1 = jnp.maximum(pos1, neg1)
        bw, nw = bp @ w, bn @ w
        r, rp = (bw + g_f * v + i1) / d1, nw / d1
        p = _device_power(bp, w, r, bw) + _device_power(bn, w, rp, nw)
        p = p + jnp.sum(g_f * (v - r) ** 2)
        p = p + jnp.sum((d1 - pos1) * r**2) + jnp.sum((d1 - neg1) * rp**2)
        pos2, neg2 = jnp.sum(cp, axis=0), jnp.sum(cn, axis=0) + g_lambda
        d2 = jnp.maximum(pos2, neg2)
        cv, nv = cp.T @ v, cn.T @ v
        s, sm = (cv + i2) / d2, (nv + g_lambda * w) / d2
        p = p + _device_power(cp.T, v, s, cv) + _device_power(cn.T, v, sm, nv)
        p = p + jnp.sum(g_lambda * (w - sm) ** 2)
        return p + jnp.sum((d2 - pos2) * s**2) + jnp.sum((d2 - neg2) * sm**2)
    # Single-ended: B- and G_lambda driven by the inverted copies (absent: zero conductance).
    wbar = jnp.zeros_like(w) if wbar is None else wbar
    vbar = jnp.zeros_like(v) if vbar is None else vbar
    bw, nw = bp @ w, bn @ wbar
    r = (bw + nw + g_f * v + i1) / (jnp.sum(bp + bn, axis=1) + g_f)
    p = _device_power(bp, w, r, bw) + _device_power(bn, wbar, r, nw)
    p = p + jnp.sum(g_f * (v - r) ** 2)
    cv, nv = cp.T @ v, cn.T @ vbar
    s = (cv + nv + g_lambda * wbar + i2) / (jnp.sum(cp + cn, axis=0) + g_lambda)
    p = p + _device_power(cp.T, v, s, cv) + _device_power(cn.T, vbar, s, nv)
    p = p + jnp.sum(g_lambda * (wbar - s) ** 2)
    # An op-amp inverter's summing node sits at (x + xbar)/2: g_inv (x - xbar)^2 / 2 in all.
    if w_bank == "opamp":
        p = p + jnp.sum(g_inv * (w - wbar) ** 2) / 2
    if v_bank == "opamp":
        p = p + jnp.sum(g_inv * (v - vbar) ** 2) / 2
    return p


def _regularized_solution(a, b, lam, mode):
    # Normal equations rather than an SVD: differentiable (grad of rel_error), and exact enough
    # for the well-conditioned matrices these circuits can solve (kappa(A)^2 * eps).
    if mode == "left":
        g = a.T @ a + lam * jnp.eye(a.shape[1], dtype=a.dtype)
        return solve(g, a.T @ b)
    g = a @ a.T + lam * jnp.eye(a.shape[0], dtype=a.dtype)
    return a.T @ solve(g, b)


class GINV(AbstractCircuit):
    r"""Least squares / pseudoinverse in one step: the outputs settle to $-A^+ b$ (volts).

    - `mode="left"` ($A$ tall, full column rank): $w = -(A^\top A)^{-1}A^\top b$, the
      least-squares solution (regression, ZF detection). $P$ TIAs read array 1 (driven by the
      $Q$ outputs $w$) plus the input currents $G_0 b$; array 2 carries the TIA outputs back
      to the $Q$ non-inverting op-amps.
    - `mode="right"` ($A$ wide, full row rank): $x = -A^\top(AA^\top)^{-1}b$, the
      minimum-norm solution (ZF precoding). $K$ non-inverting op-amps $z$ (input currents
      $G_0 b$ on their summing nodes) drive array 1, whose $M$ columns feed TIAs with outputs
      $x$; array 2 carries $x$ back.

    The equations, finite-gain steady state, stability and the settling rate
    ($\propto\sigma_{\min}(A)^2$) are in the docstring of `amcdyn._ginv`. Stable for every
    full-rank $A$, whatever its signs. Build one with [`amcdyn.GINV.from_matrix`][].
    """

    kind: ClassVar[str] = "ginv"
    a: Float[Array, "p q"]
    b: Float[Array, " p"]
    g0: Float[Array, ""]
    g_pos: Float[Array, "p q"]
    g_neg: Float[Array, "p q"]
    g_f: Float[Array, "*n1"]
    g_inv: Float[Array, ""]
    amp: OpAmp
    tia: OpAmp
    inverter: OpAmp
    mode: Literal["left", "right"] = eqx.field(static=True)
    inverters: Literal["opamp", "ideal", "differential"] = eqx.field(static=True)
    signed: bool = eqx.field(static=True)
    # Array 2's own conductances (same orientation as `g_pos`); None: a copy of array 1.
    g_pos_2: Float[Array, "p q"] | None = None
    g_neg_2: Float[Array, "p q"] | None = None

    def __check_init__(self):
        _check_fields(self)

    @classmethod
    def from_matrix(
        cls,
        a: Float[ArrayLike, "p q"],
        b: Float[ArrayLike, " p"],
        *,
        mode: Literal["left", "right"] = "left",
        g0: float | Float[ArrayLike, ""] = 1e-4,
        g_f: float | Float[ArrayLike, "*n1"] | None = None,
        a0: float | Float[ArrayLike, ""] = 1e5,
        f_gbw: float | Float[ArrayLike, ""] = 1e8,
        inverters: Literal["opamp", "ideal", "differential"] = "opamp",
        inverter_a0: float | Float[ArrayLike, ""] | None = None,
        inverter_f_gbw: float | Float[ArrayLike, ""] | None = None,
    ) -> "GINV":
        """Map $A$ to $G^\\pm = G_0 A^\\pm$ in both arrays.

        When `a` is concrete and has no negative entry, no negative arrays or inverters are
        built (`signed=False`).

        **Arguments:**

        - `a`: the real matrix $A$ (dimensionless): tall `(p, q)`, `p >= q`, for
          `mode="left"`; wide `(k, m)`, `k <= m`, for `mode="right"`.
        - `b`: the right-hand side, shape `(a.shape[0],)` (units of 1 V; it enters as the
          current $G_0 b\\cdot 1\\,$V).
        - `mode`: `"left"` (least squares, output length `q`) or `"right"` (minimum norm,
          output length `m`).
        - `g0`: conductance unit $G_0$ (S): $G^\\pm = G_0 A^\\pm$ in both arrays.
        - `g_f`: TIA feedback conductance (S), scalar or one per TIA. It sets the speed and
          damping of the loop, not the answer. Default: critical damping of the slowest
          singular pair, and for `"opamp"` at least 1.5 times the stability rule (real
          inverters add a pole: a small $G_f$ rings and latches); see `amcdyn._ginv`.
        - `a0`, `f_gbw`: DC gain and gain-bandwidth (Hz) of every main op-amp (both banks).
        - `inverters`: how $A^-$ gets its sign: `"opamp"` (single-pole inverters $\\bar w$,
          $\\bar v$ with resistors $1/G_0$), `"ideal"` (exact $-1$), or `"differential"` (no
          inverters: $B^-$ is wired to each op-amp's other input, and a conductance to ground
          balances both inputs to $D = \\max(D^+, D^-)$; a two-pole loop, stable for any
          $G_f$, and faster since $D$ is a max rather than a sum).
        - `inverter_a0`, `inverter_f_gbw`: the inverters' op-amps (default: the main ones).

        **Raises:** `ValueError` naming the argument for a wrong shape (`a` not 2-D, tall/wide
        not matching `mode`, `b` of the wrong length), non-finite entries, a rank-deficient
        `a`, non-positive `g0`/`g_f`/`a0`/`f_gbw`, or an unknown option.
        """
        _check_mode(mode)
        _check_problem(a, b, mode, need_full_rank=True)
        _check_inverters(inverters)
        check_positive("g0", g0)
        _check_g_f(g_f, _sizes(a, mode)[0])
        amp, inverter = _amps(a0, f_gbw, inverter_a0, inverter_f_gbw)
        a, b, g0 = jnp.asarray(a), jnp.asarray(b), jnp.asarray(g0)
        signed = _is_signed(a)
        if g_f is None:
            g_f = _default_g_f(a, mode, g0, inverters, signed, amp, inverter)
        g_pos, g_neg = g0 * jnp.maximum(a, 0), g0 * jnp.maximum(-a, 0)
        return cls(
            a=a,
            b=b,
            g0=g0,
            g_pos=g_pos,
            g_neg=g_neg,
            g_f=jnp.asarray(g_f),
            g_inv=g0,
            amp=amp,
            tia=amp,
            inverter=inverter,
            mode=mode,
            inverters=inverters,
            signed=signed,
        )

    def _banks(self):
        bank = self.inverters if self.signed else "none"
        return bank, bank

    def dynamics(self) -> _GINVDynamics:
        return _dynamics(self, jnp.zeros((), self.g_pos.dtype), *self._banks())

    def decode(self, v):
        return -v / V0

    def exact_solution(self):
        return _regularized_solution(self.a, self.b, 0.0, self.mode)

    def amplifier_gbw(self):
        return _gbw(self, *self._banks())

    def amplifier_power(self) -> Float[Array, ""]:
        """Static power of all op-amps (W): TIAs, second stage and real inverters (ideal and
        differential sign handling draws nothing extra)."""
        return _power(self, *self._banks())

    def resistive_power(self, y: Float[Array, " states"]) -> Float[Array, ""]:
        r"""Power dissipated in the resistive network (W) at state `y` (V): every device of
        both arrays, the TIA feedback conductances $G_f$, the balance conductances of the
        differential wiring and the op-amp inverters' two resistors $1/G_\mathrm{inv}$.

        The summing nodes follow from KCL with the op-amp outputs of `y` given (not the
        virtual-ground approximation, which fails during the transient): TIA node
        $r_i = (\sum_j B^+_{ij} w_j + B^-_{ij}\bar w_j + G_{f,i} v_i + I_{1,i})/D_{1,i}$,
        second-stage node $s_j$ likewise; device $(i, j)$ dissipates
        $B^\pm_{ij}(x_j - r_i)^2$, and an inverter $G_\mathrm{inv}(x - \bar x)^2/2$ (its node
        sits at $(x + \bar x)/2$). The input current sources' own power is not counted.
        Quadratic in `y`.

        **Arguments:**

        - `y`: the state (V), in the order of [`amcdyn.GINV.dynamics`][].

        **Returns:** the power (W), a scalar.
        """
        return _resistive_power(self, jnp.zeros((), self.g_pos.dtype), *self._banks(), y)


class Ridge(AbstractCircuit):
    r"""Ridge regression / MMSE in one step: the outputs settle to
    $-(A^\top A + \lambda I)^{-1}A^\top b$ (`mode="left"`) or $-A^\top(AA^\top + \lambda I)^{-1}b$
    (`mode="right"`, regularized ZF precoding), in volts.

    The GINV loop (see [`amcdyn.GINV`][]) plus one conductance
    $G_\lambda = \lambda G_0^2/G_f$ per second-stage op-amp, from the inverted output
    $\bar w_j = -w_j$ into its summing node: the node equation becomes
    $B^\top v - G_\lambda w + I_2 = 0$, hence $(B^\top B + G_f G_\lambda)w = \dots$ and
    $\lambda = G_f G_\lambda / G_0^2$. The inverters $\bar w$ are built even for a
    non-negative $A$ (which then needs no $\bar v$). $\lambda > 0$ also adds
    $\omega_T G_\lambda/D_2$ to every decay rate, so a rank-deficient $A$ is allowed.
    Build one with [`amcdyn.Ridge.from_matrix`][].
    """

    kind: ClassVar[str] = "ridge"
    a: Float[Array, "p q"]
    b: Float[Array, " p"]
    lam: Float[Array, ""]
    g0: Float[Array, ""]
    g_pos: Float[Array, "p q"]
    g_neg: Float[Array, "p q"]
    g_f: Float[Array, "*n1"]
    g_lambda: Float[Array, "*n2"]
    g_inv: Float[Array, ""]
    amp: OpAmp
    tia: OpAmp
    inverter: OpAmp
    mode: Literal["left", "right"] = eqx.field(static=True)
    inverters: Literal["opamp", "ideal", "differential"] = eqx.field(static=True)
    signed: bool = eqx.field(static=True)
    # Array 2's own conductances (same orientation as `g_pos`); None: a copy of array 1.
    g_pos_2: Float[Array, "p q"] | None = None
    g_neg_2: Float[Array, "p q"] | None = None

    def __check_init__(self):
        _check_fields(self)
        check_nonnegative("g_lambda", self.g_lambda)

    @classmethod
    def from_matrix(
        cls,
        a: Float[ArrayLike, "p q"],
        b: Float[ArrayLike, " p"],
        lam: float | Float[ArrayLike, ""],
        *,
        mode: Literal["left", "right"] = "left",
        g0: float | Float[ArrayLike, ""] = 1e-4,
        g_f: float | Float[ArrayLike, ""] | None = None,
        a0: float | Float[ArrayLike, ""] = 1e5,
        f_gbw: float | Float[ArrayLike, ""] = 1e8,
        inverters: Literal["opamp", "ideal", "differential"] = "opamp",
        inverter_a0: float | Float[ArrayLike, ""] | None = None,
        inverter_f_gbw: float | Float[ArrayLike, ""] | None = None,
    ) -> "Ridge":
        """Map $A$ to $G^\\pm = G_0 A^\\pm$ and $\\lambda$ to $G_\\lambda = \\lambda G_0^2/G_f$.

        **Arguments:** as [`amcdyn.GINV.from_matrix`][], plus `lam`, the regularization
        $\\lambda \\ge 0$ (dimensionless; MMSE: the noise variance over the symbol energy, per
        real dimension). `g_f` must be a scalar here (one $G_\\lambda$ per output realizes one
        $\\lambda$).

        **Raises:** `ValueError` naming the argument as for [`amcdyn.GINV.from_matrix`][]; a
        rank-deficient `a` is an error only for `lam = 0`; `lam` must be a finite scalar >= 0.
        """
        _check_mode(mode)
        if np.ndim(lam) != 0:
            raise ValueError(f"`lam` must be a scalar, got shape {np.shape(lam)}")
        if is_concrete(lam):
            lam_f = float(np.asarray(lam))
            if not np.isfinite(lam_f) or lam_f < 0:
                raise ValueError(f"`lam` must be finite and >= 0, got {lam!r}")
        full_rank = not is_concrete(lam) or float(np.asarray(lam)) == 0
        _check_problem(a, b, mode, need_full_rank=full_rank)
        _check_inverters(inverters)
        check_positive("g0", g0)
        if g_f is not None:
            _check_scalar("g_f", g_f)
        amp, inverter = _amps(a0, f_gbw, inverter_a0, inverter_f_gbw)
        a, b, g0, lam = jnp.asarray(a), jnp.asarray(b), jnp.asarray(g0), jnp.asarray(lam)
        signed = _is_signed(a)
        if g_f is None:
            g_f = _default_g_f(a, mode, g0, inverters, signed, amp, inverter, lam)
        g_f = jnp.asarray(g_f)
        g_pos, g_neg = g0 * jnp.maximum(a, 0), g0 * jnp.maximum(-a, 0)
        return cls(
            a=a,
            b=b,
            lam=lam,
            g0=g0,
            g_pos=g_pos,
            g_neg=g_neg,
            g_f=g_f,
            g_lambda=lam * g0**2 / g_f,
            g_inv=g0,
            amp=amp,
            tia=amp,
            inverter=inverter,
            mode=mode,
            inverters=inverters,
            signed=signed,
        )

    def _banks(self):
        return self.inverters, (self.inverters if self.signed else "none")

    def dynamics(self) -> _GINVDynamics:
        return _dynamics(self, self.g_lambda, *self._banks())

    def decode(self, v):
        return -v / V0

    def exact_solution(self):
        return _regularized_solution(self.a, self.b, self.lam, self.mode)

    def amplifier_gbw(self):
        return _gbw(self, *self._banks())

    def amplifier_power(self) -> Float[Array, ""]:
        """Static power of all op-amps (W): TIAs, second stage and real inverters (ideal and
        differential sign handling draws nothing extra)."""
        return _power(self, *self._banks())

    def resistive_power(self, y: Float[Array, " states"]) -> Float[Array, ""]:
        r"""Power dissipated in the resistive network (W) at state `y` (V): as
        [`amcdyn.GINV.resistive_power`][], plus the ridge conductances $G_\lambda$ (from
        $\bar w_j$ into $s_j$, or from $w_j$ into the other input for the differential wiring).

        **Arguments:**

        - `y`: the state (V), in the order of [`amcdyn.Ridge.dynamics`][].

        **Returns:** the power (W), a scalar.
        """
        return _resistive_power(self, self.g_lambda, *self._banks(), y)
