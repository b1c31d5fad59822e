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

**Second pole** (`f_p2`, [`amcdyn.OpAmp`][]): every two-pole op-amp (TIAs and second stage;
the op-amp inverters with `inverter_f_p2`) gets an internal first-pole state $x$,
$\dot x = -\omega_0 x + \omega_T e$, $\dot V = \omega_{p2}(x - V)$ ($e$ its differential input),
appended after the outputs. The equilibrium is unchanged; the loop gains one more pole per
amplifier, so the phase margin of the fast pairs shrinks. With the default $G_f$ (which
ignores $f_{p2}$) and ideal or differential sign handling, $f_{p2} \approx 3 f_\mathrm{GBW}$
already makes the loop ring and $f_{p2} \approx f_\mathrm{GBW}$ makes it oscillate with a growing
amplitude (tested, X 6 x 3); op-amp inverters' larger $G_f$ leaves more margin. The
eigenvalues of `dynamics().jacobian()` (and `Solution.stable`/`oscillatory`) report it.

**Wire resistance** (`r_w`, `r_w_col`): both arrays are crossbars with the geometry of
`amcdyn._wires` in their physical orientation (the stored $p\times q$ matrix: row lines of
segment resistance $r_w$, column lines $r_{w,\mathrm{col}}$, every line's terminal at its
index-0 end). Array 1's summing lines are its rows for the left inverse (TIAs on the rows of
$A$, columns driven by $w$) and its columns for the right one (rows driven by $w$); array 2 the
other way round (amc-physics.md §4). Each array is reduced exactly onto its terminals
(`amcdyn._wires`' Kron reduction, $Y_{ss} = \mathrm{diag}(\text{line sums}) + \Delta Y_{ss}$,
$Y_{sd} = -B + \Delta Y_{sd}$), and $G_f$, $G_\lambda$, the balance conductances and the input
currents sit at the terminals, so KCL there gives the summing nodes as affine functions of the
op-amp outputs, e.g. $(Y^+_{ss} + Y^-_{ss} + G_f)\,r = I_1 + G_f v - Y^+_{sd}w - Y^-_{sd}\bar w$
(differential: each input node with its own array). The ODE keeps one state per amplifier,
with dense $F_1$ and $L_2$ in place of the diagonal $G_f/D_1$, $G_\lambda/D_2$; $r_w = 0$ gives
the ideal loop. `resistive_power` still counts the devices at the ideal crossbar's voltages
(as [`amcdyn.INV`][]), without the wires' own dissipation.
"""

from typing import ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._circuits import V0, AbstractCircuit, AbstractDynamics, _wire_options
from ._linalg import solve
from ._opamp import OpAmp, _check_f_p2
from ._validate import check_finite, check_ndim, check_nonnegative, check_positive, is_concrete
from ._wires import _check_resistance, _corrections


_Bank = Literal["opamp", "ideal", "none"]


class _GINVDynamics(AbstractDynamics):
    """The two-stage loop of the module docstring.

    State order: the output bank first (`w` for the left inverse, `v` for the right), then the
    other bank, then the op-amp inverters $\\bar w$ and $\\bar v$ (when real); then, in the same
    order, the internal first-pole state $x$ of every bank whose op-amps have a second pole
    ($\\dot x = -\\omega_0 x + \\omega_T e$, $\\dot V = \\omega_{p2}(x - V)$, see
    [`amcdyn.OpAmp`][]).

    The summing nodes are affine in the op-amp outputs, $r = B_1^+ w + B_1^-\\bar w + F_1 v + c_1$
    and $s = B_2^+ v + B_2^-\\bar v + L_2\\bar w + c_2$ (V). With ideal wires $F_1$ and $L_2$ are
    diagonal (stored as vectors); with wire resistance they are the dense matrices of the
    reduced network (`_wired_operators`).
    """

    bp1: Float[Array, "n1 n2"]  # B+ / D1
    bn1: Float[Array, "n1 n2"]  # B- / D1
    f1: Float[Array, " n1"] | Float[Array, "n1 n1"]  # G_f / D1
    c1: Float[Array, " n1"]  # I1 / D1 (V)
    bp2: Float[Array, "n2 n1"]  # B+^T / D2
    bn2: Float[Array, "n2 n1"]  # B-^T / D2
    l2: Float[Array, " n2"] | Float[Array, "n2 n2"]  # G_lambda / D2
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
    # Second poles (rad/s) of the TIAs, the second stage and the inverters; None: single pole.
    tia_wp2: Float[Array, "*n1"] | None = None
    amp_wp2: Float[Array, "*n2"] | None = None
    inv_wp2: Float[Array, "*m"] | None = None

    @property
    def dtype(self):
        return self.bp1.dtype

    @property
    def _sizes(self):
        return self.bp1.shape

    def _banks(self):
        """[(name, size, w0, wT, w_p2)] in state order: 'v' TIAs, 'w' second stage, 'wb'/'vb'
        op-amp inverters."""
        n1, n2 = self._sizes
        v = ("v", n1, self.tia_w0, self.tia_wt, self.tia_wp2)
        w = ("w", n2, self.amp_w0, self.amp_wt, self.amp_wp2)
        banks = [w, v] if self.output == "w" else [v, w]
        if self.w_bank == "opamp":
            banks.append(("wb", n2, self.inv_w0, self.inv_wt, self.inv_wp2))
        if self.v_bank == "opamp":
            banks.append(("vb", n1, self.inv_w0, self.inv_wt, self.inv_wp2))
        return banks

    def _layout(self):
        """(out, first): state slices of each bank's outputs and of its first-pole states (the
        outputs themselves for a single-pole bank)."""
        out, first, k = {}, {}, 0
        banks = self._banks()
        for name, n, *_ in banks:
            out[name] = first[name] = slice(k, k + n)
            k += n
        for name, n, *_, wp2 in banks:
            if wp2 is not None:
                first[name] = slice(k, k + n)
                k += n
        return out, first

    def _unpack(self, y):
        """(v, w, wbar, vbar): the op-amp outputs (an inverted copy is None when absent)."""
        out, _ = self._layout()
        v, w = y[out["v"]], y[out["w"]]
        wbar = vbar = None
        if self.w_bank == "opamp":
            wbar = y[out["wb"]]
        elif self.w_bank == "ideal":
            wbar = -w
        if self.v_bank == "opamp":
            vbar = y[out["vb"]]
        elif self.v_bank == "ideal":
            vbar = -v
        return v, w, wbar, vbar

    def vector_field(self, y):
        out, first = self._layout()
        v, w, wbar, vbar = self._unpack(y)
        r = self.bp1 @ w + _apply(self.f1, v) + self.c1
        s = self.bp2 @ v + self.c2
        if wbar is not None:
            r = r + self.bn1 @ wbar
            s = s + _apply(self.l2, wbar)
        if vbar is not None:
            s = s + self.bn2 @ vbar
        # What each bank's first pole integrates (V/s, before -w0 x): TIAs amplify -r, the
        # second stage +s, an inverter -(x + xbar)/2.
        drive = {"v": -self.tia_wt * r, "w": self.amp_wt * s}
        if "wb" in out:
            drive["wb"] = -self.inv_wt * (w + wbar) / 2
        if "vb" in out:
            drive["vb"] = -self.inv_wt * (v + vbar) / 2
        outs, firsts = [], []
        for name, _, w0, _, wp2 in self._banks():
            x = y[first[name]]
            dx = -w0 * x + drive[name]
            if wp2 is None:
                outs.append(dx)
            else:
                outs.append(wp2 * (x - y[out[name]]))
                firsts.append(dx)
        return jnp.concatenate(outs + firsts)

    def jacobian(self):
        n1, n2 = self._sizes
        out, first = self._layout()
        n, dt = self.n_states, self.dtype
        # r = R y + c1 and s = S y + c2: the summing nodes as functions of the state.
        rmat = jnp.zeros((n1, n), dt).at[:, out["w"]].set(self.bp1)
        rmat = rmat.at[:, out["v"]].add(_dense(self.f1, n1, dt))
        smat = jnp.zeros((n2, n), dt).at[:, out["v"]].set(self.bp2)
        # Inverted copies: their own states (op-amp inverters), or -x (ideal/differential).
        if self.w_bank != "none":
            target, sign = (out["wb"], 1.0) if self.w_bank == "opamp" else (out["w"], -1.0)
            rmat = rmat.at[:, target].add(sign * self.bn1)
            smat = smat.at[:, target].add(sign * _dense(self.l2, n2, dt))
        if self.v_bank != "none":
            target, sign = (out["vb"], 1.0) if self.v_bank == "opamp" else (out["v"], -1.0)
            smat = smat.at[:, target].add(sign * self.bn2)
        rows = {"v": -(self.tia_wt * jnp.ones(n1, dt))[:, None] * rmat}
        rows["w"] = (self.amp_wt * jnp.ones(n2, dt))[:, None] * smat
        for name, x in (("wb", "w"), ("vb", "v")):
            if name in out:
                m = out[name].stop - out[name].start
                half = -jnp.diag(self.inv_wt * jnp.ones(m, dt) / 2)
                rows[name] = jnp.zeros((m, n), dt).at[:, out[x]].set(half)
                rows[name] = rows[name].at[:, out[name]].add(half)
        jac = jnp.zeros((n, n), dt)
        for name, m, w0, _, wp2 in self._banks():
            fx = first[name]
            jac = jac.at[fx, :].set(rows[name])
            jac = jac.at[fx, fx].add(-jnp.diag(w0 * jnp.ones(m, dt)))
            if wp2 is not None:
                rate = jnp.diag(wp2 * jnp.ones(m, dt))
                jac = jac.at[out[name], fx].set(rate).at[out[name], out[name]].set(-rate)
        return jac

    def _beta(self, bank):
        # An inverter settles to -beta times its input: beta = 1 (ideal), 1/(1 + 2/A0') (op-amp).
        if bank == "opamp":
            return (self.inv_wt / 2) / (self.inv_w0 + self.inv_wt / 2)
        return jnp.ones((), self.dtype) if bank == "ideal" else jnp.zeros((), self.dtype)

    def steady_state(self):
        # Eliminate the inverters (xbar = -beta x) and the TIAs (v = -E1^-1 (B_eff w + c1),
        # E1 = F1 + w0/wT): one n2 x n2 solve instead of the dense n_states solve. A second
        # pole is a unity-gain low-pass: its first-pole state equals the output at equilibrium.
        n1, n2 = self._sizes
        dt = self.dtype
        ones1, ones2 = jnp.ones(n1, dt), jnp.ones(n2, dt)
        beta_w, beta_v = self._beta(self.w_bank), self._beta(self.v_bank)
        b_eff = self.bp1 - beta_w * self.bn1
        c_eff = self.bp2 - beta_v * self.bn2
        if self.f1.ndim < 2:
            e1 = (self.f1 + self.tia_w0 / self.tia_wt) * ones1
            eb, ec = b_eff / e1[:, None], self.c1 / e1
        else:
            e1 = self.f1 + jnp.diag(self.tia_w0 / self.tia_wt * ones1)
            sol = solve(e1, jnp.concatenate([b_eff, self.c1[:, None]], axis=1))
            eb, ec = sol[:, :-1], sol[:, -1]
        m = c_eff @ eb + beta_w * _dense(self.l2, n2, dt)
        m = m + jnp.diag(self.amp_w0 / self.amp_wt * ones2)
        w = solve(m, self.c2 - c_eff @ ec)
        v = -(eb @ w + ec)
        values = {"v": v, "w": w, "wb": -beta_w * w, "vb": -beta_v * v}
        banks = self._banks()
        parts = [values[name] for name, *_ in banks]
        parts += [values[name] for name, *_, wp2 in banks if wp2 is not None]
        return jnp.concatenate(parts)


def _apply(f, x):
    """A diagonal (vector) or dense operator applied to `x`."""
    return f * x if f.ndim < 2 else f @ x


def _dense(f, n, dtype):
    return jnp.diag(f * jnp.ones(n, dtype)) if f.ndim < 2 else f


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


def _amps(a0, f_gbw, inverter_a0, inverter_f_gbw, f_p2=None, inverter_f_p2=None):
    _check_scalar("a0", a0, allow_inf=True)
    _check_scalar("f_gbw", f_gbw)
    if inverter_a0 is not None:
        _check_scalar("inverter_a0", inverter_a0, allow_inf=True)
    if inverter_f_gbw is not None:
        _check_scalar("inverter_f_gbw", inverter_f_gbw)
    for name, value in (("f_p2", f_p2), ("inverter_f_p2", inverter_f_p2)):
        if value is not None:
            _check_scalar(name, value, allow_inf=True)
    # None, or inf: a single pole (as for INV); the inverters default to the main f_p2.
    f_p2 = _check_f_p2("f_p2", f_p2)
    inverter_f_p2 = f_p2 if inverter_f_p2 is None else _check_f_p2("inverter_f_p2", inverter_f_p2)
    amp = OpAmp(a0, f_gbw, f_p2=f_p2)
    inverter = OpAmp(
        a0 if inverter_a0 is None else inverter_a0,
        f_gbw if inverter_f_gbw is None else inverter_f_gbw,
        f_p2=inverter_f_p2,
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
        if not isinstance(amp, OpAmp):
            raise ValueError(f"`{name}` must be an amcdyn.OpAmp, got {amp!r}")
        # One or two poles; the loop is modelled with offset-free, linear op-amps.
        if is_concrete(amp.v_os) and np.any(np.asarray(amp.v_os) != 0):
            raise ValueError(f"`{name}` must have no input offset (v_os=0) for GINV/Ridge")
    if (circuit.r_w is None) != (circuit.r_w_col is None):
        raise ValueError("`r_w` and `r_w_col` must both be set (wires) or both be None")
    for name in ("r_w", "r_w_col"):
        if getattr(circuit, name) is not None:
            _check_resistance(name, getattr(circuit, name))


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


def _wire_corrections(circuit, signed):
    """The wired crossbars' corrections to the ideal admittances, in the loop's orientation.

    Every array is reduced in its physical orientation (the stored `(p, q)` matrix, row lines
    of resistance `r_w`, column lines `r_w_col`, every line's terminal at its index-0 end; see
    `amcdyn._wires`), all of them in one batched `amcdyn._wires` reduction. Which lines are
    summing lines depends on the array and the mode (module docstring, "Wire resistance").

    Returns `[(dss, dsd) for B+, B-, C+, C-]` (None for the negative arrays of an unsigned
    matrix): the summing-node block $\\Delta Y_{ss}$ and the summing-to-driver block
    $\\Delta Y_{sd}$ (S), with $Y_{ss} = \\mathrm{diag}(\\text{line sums}) + \\Delta Y_{ss}$ and
    $Y_{sd} = -B + \\Delta Y_{sd}$ ($B$: array 1 as `(n1, n2)`, array 2 as `(n2, n1)`).
    """
    gp2 = circuit.g_pos if circuit.g_pos_2 is None else circuit.g_pos_2
    gn2 = circuit.g_neg if circuit.g_neg_2 is None else circuit.g_neg_2
    arrays = [circuit.g_pos, gp2] + ([circuit.g_neg, gn2] if signed else [])
    dtype = jnp.result_type(*arrays, circuit.r_w, float)
    r_row = jnp.asarray(circuit.r_w, dtype)
    r_col = r_row if circuit.r_w_col is None else jnp.asarray(circuit.r_w_col, dtype)
    d_rr, d_rc, d_cc = jax.vmap(_corrections, in_axes=(0, None, None))(
        jnp.stack([jnp.asarray(g, dtype) for g in arrays]), r_row, r_col
    )
    # Array 1 sums on its rows for the left inverse (TIAs on the rows of A), on its columns
    # for the right one; array 2 the other way round.
    rows_sum = [circuit.mode == "left", circuit.mode == "right"] * (2 if signed else 1)
    out = [
        (d_rr[k], d_rc[k]) if on_rows else (d_cc[k], d_rc[k].T)
        for k, on_rows in enumerate(rows_sum)
    ]
    if signed:
        return out[0], out[2], out[1], out[3]
    return out[0], None, out[1], None


def _reduce_node(d, dss, drives, const):
    """Operators of a wired summing node: solve $(D + \\Delta Y_{ss}) u = \\sum_k G_k x_k + I$.

    `d`: the ideal total conductance of each node (S); `drives`: the `(n, k)` conductance
    blocks towards the driving voltages (with $-\\Delta Y_{sd}$ already added); `const`: the
    injected current (A). Dividing by `d` first makes zero wires give the ideal operators.
    Returns the blocks of $u$ (dimensionless) and its constant part (V)."""
    n = d.shape[0]
    mat = jnp.eye(n, dtype=d.dtype) + dss / d[:, None]
    rhs = jnp.concatenate([g / d[:, None] for g in drives] + [(const / d)[:, None]], axis=1)
    sol = solve(mat, rhs)
    parts, k = [], 0
    for g in drives:
        parts.append(sol[:, k : k + g.shape[1]])
        k += g.shape[1]
    return parts, sol[:, -1]


def _wired_operators(circuit, g_lambda, bp, bn, cp, cn, i1, i2, signed):
    """(bp1, bn1, f1, c1, bp2, bn2, l2, c2) of `_GINVDynamics` with wire resistance.

    KCL at the summing terminals of the reduced arrays, with $G_f$, $G_\\lambda$, the balance
    conductances and the input currents at the terminals (module docstring). Single-ended:
    $(Y^+_{ss} + Y^-_{ss} + G_f) r = I_1 + G_f v - Y^+_{sd} w - Y^-_{sd}\\bar w$ (and the same for
    $s$ with $G_\\lambda\\bar w$). Differential: the two inputs of each op-amp are separate
    nodes, each with its own array, both with the ideal total $D$."""
    n1, n2 = bp.shape
    dtype = bp.dtype
    g_f = circuit.g_f * jnp.ones(n1, dtype)
    g_l = g_lambda * jnp.ones(n2, dtype)
    (dbp_ss, dbp_sd), neg1, (dcp_ss, dcp_sd), neg2 = _wire_corrections(circuit, signed)
    zeros = (jnp.zeros((n1, n1), dtype), jnp.zeros((n1, n2), dtype))
    dbn_ss, dbn_sd = zeros if neg1 is None else neg1
    zeros = (jnp.zeros((n2, n2), dtype), jnp.zeros((n2, n1), dtype))
    dcn_ss, dcn_sd = zeros if neg2 is None else neg2
    ap, an = bp - dbp_sd, bn - dbn_sd  # array 1's drive blocks, (n1, n2)
    cpt, cnt = cp.T - dcp_sd, cn.T - dcn_sd  # array 2's, (n2, n1)
    if circuit.inverters == "differential":
        # r (- input: B+, G_f, I1) and rp (+ input: B-) are separate nodes, both at total d1;
        # the TIA sees r - rp, i.e. B- acts through wbar = -w. Likewise s (+: C+, I2) and
        # sm (-: C-, G_lambda w).
        d1 = jnp.maximum(jnp.sum(bp, axis=1) + g_f, jnp.sum(bn, axis=1))
        d2 = jnp.maximum(jnp.sum(cp, axis=0), jnp.sum(cn, axis=0) + g_l)
        (bp1, f1), c1 = _reduce_node(d1, dbp_ss, [ap, jnp.diag(g_f)], i1)
        (bn1,), _ = _reduce_node(d1, dbn_ss, [an], jnp.zeros(n1, dtype))
        (bp2,), c2 = _reduce_node(d2, dcp_ss, [cpt], i2)
        (bn2, l2), _ = _reduce_node(d2, dcn_ss, [cnt, jnp.diag(g_l)], jnp.zeros(n2, dtype))
        return bp1, bn1, f1, c1, bp2, bn2, l2, c2
    d1 = jnp.sum(bp + bn, axis=1) + g_f
    d2 = jnp.sum(cp + cn, axis=0) + g_l
    (bp1, bn1, f1), c1 = _reduce_node(d1, dbp_ss + dbn_ss, [ap, an, jnp.diag(g_f)], i1)
    (bp2, bn2, l2), c2 = _reduce_node(d2, dcp_ss + dcn_ss, [cpt, cnt, jnp.diag(g_l)], i2)
    return bp1, bn1, f1, c1, bp2, bn2, l2, c2


def _dynamics(circuit, g_lambda, w_bank, v_bank) -> _GINVDynamics:
    """The loop's ODE for a GINV/Ridge circuit (see the module docstring)."""
    bp, bn, cp, cn, i1, i2 = _arrays(circuit, v_bank)
    n1, n2 = bp.shape
    if circuit.r_w is not None:
        ops = _wired_operators(circuit, g_lambda, bp, bn, cp, cn, i1, i2, v_bank != "none")
    elif circuit.inverters == "differential":
        # B- (and G_lambda) sit on the op-amp's other input; a conductance to ground balances
        # the two inputs to the larger total, so v+ - v- = (sum of signed currents) / D.
        d1 = jnp.maximum(jnp.sum(bp, axis=1) + circuit.g_f, jnp.sum(bn, axis=1))
        d2 = jnp.maximum(jnp.sum(cp, axis=0), jnp.sum(cn, axis=0) + g_lambda)
    else:
        d1 = jnp.sum(bp + bn, axis=1) + circuit.g_f
        d2 = jnp.sum(cp + cn, axis=0) + g_lambda
    if circuit.r_w is None:
        ops = (
            bp / d1[:, None],
            bn / d1[:, None],
            circuit.g_f / d1,
            i1 / d1,
            cp.T / d2[:, None],
            cn.T / d2[:, None],
            g_lambda / d2,
            i2 / d2,
        )
    if circuit.inverters == "differential":
        w_bank = "ideal" if w_bank == "differential" else w_bank
        v_bank = "ideal" if v_bank == "differential" else v_bank
    inv = circuit.inverter
    real = "opamp" in (w_bank, v_bank)
    sizes = [n1, n2] + [n2] * (w_bank == "opamp") + [n1] * (v_bank == "opamp")
    poles = [circuit.tia.two_pole, circuit.amp.two_pole] + [inv.two_pole] * (len(sizes) - 2)
    bp1, bn1, f1, c1, bp2, bn2, l2, c2 = ops
    return _GINVDynamics(
        bp1=bp1,
        bn1=bn1,
        f1=f1,
        c1=c1,
        bp2=bp2,
        bn2=bn2,
        l2=l2,
        c2=c2,
        tia_w0=circuit.tia.w0,
        tia_wt=circuit.tia.w_t,
        amp_w0=circuit.amp.w0,
        amp_wt=circuit.amp.w_t,
        inv_w0=inv.w0 if real else None,
        inv_wt=inv.w_t if real else None,
        w_bank=w_bank,
        v_bank=v_bank,
        output="w" if circuit.mode == "left" else "v",
        n_states=sum(sizes) + sum(n for n, p in zip(sizes, poles) if p),
        n_outputs=n2 if circuit.mode == "left" else n1,
        tia_wp2=circuit.tia.w_p2,
        amp_wp2=circuit.amp.w_p2,
        inv_wp2=inv.w_p2 if real else None,
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
    full-rank $A$, whatever its signs (with single-pole op-amps). Two-pole op-amps (`f_p2`)
    add one state each; wire resistance (`r_w`, `r_w_col`) is reduced exactly onto the
    amplifier terminals (module docstring). Build one with [`amcdyn.GINV.from_matrix`][].
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
    # Wire segment resistance (Ω) of every row line / column line of both arrays; None: ideal.
    r_w: Float[Array, ""] | None = None
    r_w_col: Float[Array, ""] | None = None

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
        f_p2: float | Float[ArrayLike, ""] | None = None,
        inverter_f_p2: float | Float[ArrayLike, ""] | None = None,
        r_w: float | Float[ArrayLike, ""] | None = None,
        r_w_col: float | Float[ArrayLike, ""] | None = None,
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
        - `f_p2`: second pole (Hz, > 0) of every main op-amp (TIAs and second stage), a
          scalar; `None` or `inf` (default): single pole. See [`amcdyn.OpAmp`][]: each
          two-pole op-amp adds one internal state. The default `g_f` ignores it: a low
          `f_p2` can make the loop ring or go unstable, which the eigenvalues (and the
          status of a simulation) report.
        - `inverter_f_p2`: the op-amp inverters' second pole (Hz); default `f_p2` (pass `inf`
          for single-pole inverters behind two-pole main op-amps).
        - `r_w`: wire resistance (Ω, >= 0) of every row-line segment of both arrays (and of
          every column-line segment unless `r_w_col` is given); `None` (default): ideal
          wires. Each array is reduced exactly onto its terminals (`amcdyn._wires`); see
          "Wire resistance" in `amcdyn._ginv`.
        - `r_w_col`: column-line segment resistance (Ω); default `r_w` (0 if only it is given).

        **Raises:** `ValueError` naming the argument for a wrong shape (`a` not 2-D, tall/wide
        not matching `mode`, `b` of the wrong length), non-finite entries, a rank-deficient
        `a`, non-positive `g0`/`g_f`/`a0`/`f_gbw`/`f_p2`, a negative or non-finite `r_w`, or an
        unknown option.
        """
        _check_mode(mode)
        _check_problem(a, b, mode, need_full_rank=True)
        _check_inverters(inverters)
        check_positive("g0", g0)
        _check_g_f(g_f, _sizes(a, mode)[0])
        amp, inverter = _amps(a0, f_gbw, inverter_a0, inverter_f_gbw, f_p2, inverter_f_p2)
        r_w, r_w_col = _wire_options(r_w, r_w_col)
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
            r_w=r_w,
            r_w_col=r_w_col,
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
        Quadratic in `y`. With wire resistance the devices are counted at the ideal
        crossbar's node voltages and the wires' own dissipation is left out (as for
        [`amcdyn.INV`][]).

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
    # Wire segment resistance (Ω) of every row line / column line of both arrays; None: ideal.
    r_w: Float[Array, ""] | None = None
    r_w_col: Float[Array, ""] | None = None

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
        f_p2: float | Float[ArrayLike, ""] | None = None,
        inverter_f_p2: float | Float[ArrayLike, ""] | None = None,
        r_w: float | Float[ArrayLike, ""] | None = None,
        r_w_col: float | Float[ArrayLike, ""] | None = None,
    ) -> "Ridge":
        """Map $A$ to $G^\\pm = G_0 A^\\pm$ and $\\lambda$ to $G_\\lambda = \\lambda G_0^2/G_f$.

        **Arguments:** as [`amcdyn.GINV.from_matrix`][] (including the second pole `f_p2`,
        `inverter_f_p2` and the wires `r_w`, `r_w_col`), plus `lam`, the regularization
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
        amp, inverter = _amps(a0, f_gbw, inverter_a0, inverter_f_gbw, f_p2, inverter_f_p2)
        r_w, r_w_col = _wire_options(r_w, r_w_col)
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
            r_w=r_w,
            r_w_col=r_w_col,
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
