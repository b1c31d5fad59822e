"""Result of a simulation: waveforms, settling time, precision, stability and status."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Complex, Float, Int


class RESULTS(eqx.Enumeration):
    """Outcome of a simulation. `settled` is success; every other item is a failure."""

    settled = ""
    not_settled = (
        "The transient did not settle to within the tolerance band by `t_max`. Increase `t_max` "
        "(or `max_steps`), or pass `throw=False` to inspect the waveform."
    )
    unstable = (
        "The circuit is unstable: its linearized system has an eigenvalue with positive real part "
        "(see `Solution.max_real_eig` with `throw=False`). For INV the matrix must be "
        "positive-stable after the row scaling S^-1, e.g. symmetric positive definite."
    )
    nonfinite = (
        "The transient produced non-finite values (NaN or inf), or the exact answer is not finite "
        "(a singular matrix)."
    )
    max_steps = (
        "The ODE solver reached `max_steps` before `t_max`: the circuit is probably stiff. Pass an "
        "implicit solver (e.g. `solver=diffrax.Kvaerno5()`), raise `max_steps`, or use "
        "`amcdyn.simulate_analytic`."
    )


STATUS_NAMES = ("settled", "not_settled", "unstable", "nonfinite", "max_steps")


class Solution(eqx.Module):
    """What a simulation returns. Times in s, voltages in V, rates in 1/s.

    **Fields:**

    - `ts`: saved times, shape `(times,)`; `vs`: output waveforms at `ts`, shape
      `(times, outputs)` (the op-amp outputs, the state starts at 0 V).
    - `v_final`: outputs at the end of the transient; `v_steady`: the equilibrium of the linear
      model (finite gain included).
    - `solution`: the vector the final outputs represent (sign and scale of the mapping undone);
      `exact`: the exact answer by numerical linear algebra.
    - `rel_error`: $\\|x - x^*\\|_2/\\|x^*\\|_2$; `bits`: $-\\log_2$ of it.
    - `settling_time`: last time any output lies outside $\\pm\\varepsilon\\max|v_\\mathrm{steady}|$
      around its final value (s). The final value is the equilibrium `v_steady` (the
      $t\\to\\infty$ value of the linear model), which `v_final` matches within the band when the
      status is `settled`. `inf` if not settled by `t_max`, `nan` if unstable/non-finite.
    - `rel_error`/`bits` are `nan` for an unstable or non-finite transient.
    - `settle_integral`: $\\int_0^{t_\\max} \\sum_i (v_i(t) - v_{\\mathrm{steady},i})^2 dt /
      \\max|v_\\mathrm{steady}|^2$ (s): a smooth, differentiable settling measure.
    - `t_max`: end of the simulated interval (s); `tol`: the relative band $\\varepsilon$.
    - `eigenvalues`: of the linearized system (1/s), or `None` if not computed;
      `max_real_eig`, `slowest_time_constant` (s), `oscillatory`, `stable`.
    - `result`: a [`amcdyn.RESULTS`][] item; `num_steps`: accepted ODE steps (0 for analytic).
    - `power`: static power of all amplifiers (W), from the circuit's amplifier power model.
    - `energy`: energy of one solve (J): `power` x `settling_time`, plus the resistive
      (crossbar) dissipation $\\int_0^{t_s} \\sum G\\,\\Delta V^2 dt$ over the transient,
      plus the DAC/ADC conversions. `inf`/`nan` exactly when `settling_time` is, and NaN when
      the simulator was called with `energy=False` (not computed).
    - `rail_hit`, `slew_hit`: whether some amplifier came within 10% of its output rail
      ($|V| > 0.9\\,v_\\mathrm{sat}$) or of its slew-rate limit ($|\\dot V| > 0.9\\,\\mathrm{SR}$)
      at any time of the transient ([`amcdyn.simulate`][] integrates both conditions along
      the trajectory). Always `False` for a linear circuit. See `status_text`.
    """

    ts: Float[Array, " times"]
    vs: Float[Array, "times outputs"]
    v_final: Float[Array, " outputs"]
    v_steady: Float[Array, " outputs"]
    solution: Float[Array, " outputs"]
    exact: Float[Array, " outputs"]
    rel_error: Float[Array, ""]
    bits: Float[Array, ""]
    settling_time: Float[Array, ""]
    settle_integral: Float[Array, ""]
    t_max: Float[Array, ""]
    tol: Float[Array, ""]
    eigenvalues: Complex[Array, " states"] | None
    max_real_eig: Float[Array, ""]
    slowest_time_constant: Float[Array, ""]
    oscillatory: Bool[Array, ""]
    stable: Bool[Array, ""]
    result: RESULTS
    num_steps: Int[Array, ""]
    power: Float[Array, ""]
    energy: Float[Array, ""]
    rail_hit: Bool[Array, ""] = eqx.field(default_factory=lambda: jnp.asarray(False))
    slew_hit: Bool[Array, ""] = eqx.field(default_factory=lambda: jnp.asarray(False))

    @property
    def status(self) -> str:
        """The status name (`settled`, `not_settled`, `unstable`, `nonfinite`, `max_steps`).

        Only for an unbatched, concrete solution; see `status_names` for batches.
        """
        return STATUS_NAMES[int(np.asarray(self.result._value))]

    @property
    def status_text(self) -> str:
        """The status name, followed by the limits hit during the transient, e.g.
        `"settled (output rail hit, slew-rate limit hit)"`. Unbatched, concrete solutions."""
        hits = []
        if bool(np.asarray(self.rail_hit)):
            hits.append("output rail hit")
        if bool(np.asarray(self.slew_hit)):
            hits.append("slew-rate limit hit")
        return self.status + (f" ({', '.join(hits)})" if hits else "")

    def status_names(self) -> np.ndarray:
        """Status names for a (possibly batched) solution, as a NumPy array of str."""
        codes = np.asarray(self.result._value)
        return np.vectorize(lambda c: STATUS_NAMES[int(c)])(codes) if codes.ndim else np.asarray(
            STATUS_NAMES[int(codes)]
        )

    def summary(self) -> dict:
        """A JSON-ready dict of the headline numbers (unbatched solutions)."""
        f = lambda x: float(np.asarray(x))
        return {
            "status": self.status,
            "settling_time_s": f(self.settling_time),
            "solution": [float(v) for v in np.asarray(self.solution)],
            "exact": [float(v) for v in np.asarray(self.exact)],
            "rel_error": f(self.rel_error),
            "bits": f(self.bits),
            "stable": bool(np.asarray(self.stable)),
            "max_real_eig": f(self.max_real_eig),
            "slowest_time_constant_s": f(self.slowest_time_constant),
            "oscillatory": bool(np.asarray(self.oscillatory)),
            "settle_integral_s": f(self.settle_integral),
            "t_max_s": f(self.t_max),
            "tol": f(self.tol),
            "num_steps": int(np.asarray(self.num_steps)),
            "power_w": f(self.power),
            "energy_j": f(self.energy),
            "rail_hit": bool(np.asarray(self.rail_hit)),
            "slew_hit": bool(np.asarray(self.slew_hit)),
            "status_text": self.status_text,
        }


def status_code(name: str) -> int:
    return STATUS_NAMES.index(name)


