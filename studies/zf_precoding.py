"""Study: settling time of analog ZF precoding for a 16 x 128 massive-MIMO downlink vs GBW.

Target (arXiv 2211.03624, abstract; amc-physics.md §7.5, reproduction target 6): "the
zero-forcing precoding is solved within 20 ns for a 16x128 MIMO system". The paper's circuit,
GBW and settling band are not available [NA], so this study asks: with amcdyn's right-GINV
circuit (`amcdyn.mimo.zf_precoder`: real-equivalent channel 32 x 256, 256 TIAs and 32
non-inverting op-amps, single-pole op-amps with A0 = 1e5), what op-amp gain-bandwidth makes the
precoder settle within 20 ns, for each way of realising the negative conductances?

- `differential`: G- on the other op-amp input, balanced inputs (no inverters; 288 states);
- `ideal`: ideal inverters (288 states);
- `opamp`: single-pole op-amp inverters, same GBW as the main op-amps (576 states).

Method. K = 16 users, M = 128 antennas, i.i.d. CN(0, 1) channels (one per seed), 16-QAM symbols.
The exact transient (`amcdyn.simulate_analytic`, eigendecomposition) gives the settling time to
a band of tol x full scale (tol = 1e-3 and 1e-2). With every op-amp at the same GBW and a fixed
A0, the ODE scales exactly with 1/GBW, so t_settle(GBW) = t_settle(1 GHz) x 1 GHz / GBW; this is
checked on a sweep, and one case is cross-checked with the ODE path (`amcdyn.simulate`).
G_f is the circuit's default (critical damping of the slowest singular pair, plus the
stability rule for op-amp inverters) and, for comparison, the best fixed G_f on a grid (the
same G_f for every channel: a design constant).

Usage: `OPENBLAS_NUM_THREADS=1 python studies/zf_precoding.py [--seeds 8] [--quick]`.
Writes `studies/results/zf_precoding.md` and prints progress.
"""

import argparse
import datetime
import os
import platform
import sys
import time


os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from amcdyn._xla_flags import disable_cpu_eigen_threads, keep_freed_host_memory  # noqa: E402


disable_cpu_eigen_threads()
keep_freed_host_memory()

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np


jax.config.update("jax_enable_x64", True)

import amcdyn
from amcdyn import mimo


K, M = 16, 128
G0 = 1e-4
A0 = 1e5
F_REF = 1e9  # Hz: reference GBW; other GBWs by exact 1/GBW scaling (checked below)
T_TARGET = 20e-9
WIRINGS = ("differential", "ideal", "opamp")
TOLS = (1e-3, 1e-2)


def problem(seed):
    kh, ks = jr.split(jr.PRNGKey(seed))
    h = mimo.rayleigh_channel(kh, K, M)
    s, _ = mimo.qam_symbols(ks, (K,), 16)
    return h, s


def make_runner(wiring):
    @eqx.filter_jit
    def run(h, s, g_f, f_gbw, tol):
        c = mimo.zf_precoder(h, s, inverters=wiring, a0=A0, f_gbw=f_gbw, g_f=g_f)
        sol = amcdyn.simulate_analytic(c, tol=tol, n_save=0, throw=False)
        return sol.settling_time, sol.rel_error, sol.slowest_time_constant, sol.result._value

    return run


def default_g_f(h, s, wiring):
    return float(mimo.zf_precoder(h, s, inverters=wiring, a0=A0, f_gbw=F_REF).g_f)


def stats(x):
    x = np.asarray(x)
    return float(np.median(x)), float(np.max(x))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="2 channels, coarse G_f grid")
    parser.add_argument(
        "--out",
        default=os.path.join(os.path.dirname(__file__), "results", "zf_precoding.md"),
    )
    args = parser.parse_args()
    seeds = list(range(2 if args.quick else args.seeds))
    grid = np.geomspace(1.0, 16.0, 5 if args.quick else 13)  # G_f / G0
    log = lambda *a: print(*a, flush=True)
    t_start = time.time()
    problems = [problem(seed) for seed in seeds]

    # Channel statistics: singular values of the real-equivalent channel (each twice those of H).
    sv = np.array([np.linalg.svd(np.asarray(h), compute_uv=False) for h, _ in problems])
    mp = (np.sqrt(M) - np.sqrt(K), np.sqrt(M) + np.sqrt(K))  # Marchenko-Pastur edges
    log(
        f"sigma_min {sv[:, -1].mean():.2f} sigma_max {sv[:, 0].mean():.2f} (MP {mp[0]:.2f}, "
        f"{mp[1]:.2f})"
    )

    results = {}
    for wiring in WIRINGS:
        run = make_runner(wiring)
        t0 = time.time()
        rec = {"default_g_f": [], "default": {tol: [] for tol in TOLS}, "rel_error": []}
        rec["grid"] = {tol: np.zeros((len(seeds), len(grid))) for tol in TOLS}
        rec["status_ok"] = True
        for k, (h, s) in enumerate(problems):
            g_def = default_g_f(h, s, wiring)
            rec["default_g_f"].append(g_def / G0)
            for tol in TOLS:
                ts, err, tau, code = run(
                    h, s, jnp.asarray(g_def), jnp.asarray(F_REF), jnp.asarray(tol)
                )
                rec["default"][tol].append(float(ts))
                rec["status_ok"] &= int(code) == 0
                if tol == TOLS[0]:
                    rec["rel_error"].append(float(err))
                for j, g in enumerate(grid):
                    ts, _, _, code = run(
                        h, s, jnp.asarray(g * G0), jnp.asarray(F_REF), jnp.asarray(tol)
                    )
                    rec["grid"][tol][k, j] = float(ts) if int(code) == 0 else np.inf
        worst = rec["grid"][TOLS[0]].max(axis=0)
        j_best = int(np.argmin(worst))
        rec["best_g_f"] = float(grid[j_best])
        rec["best"] = {tol: rec["grid"][tol][:, j_best] for tol in TOLS}
        results[wiring] = rec
        log(
            f"{wiring}: default G_f/G0 {np.median(rec['default_g_f']):.2f}, t_settle(1e-3) "
            f"median/max {stats(rec['default'][1e-3])[0] * 1e9:.2f}/"
            f"{stats(rec['default'][1e-3])[1] * 1e9:.2f} ns at 1 GHz; best fixed G_f/G0 "
            f"{rec['best_g_f']:.2f} -> max {worst[j_best] * 1e9:.2f} ns ({time.time() - t0:.0f} s)"
        )

    # GBW sweep on channel 0 (default G_f): check the exact 1/GBW scaling.
    sweep_f = np.array([1e8, 2e8, 3e8, 5e8, 7e8, 1e9, 2e9])
    sweep = {}
    h, s = problems[0]
    for wiring in WIRINGS:
        run = make_runner(wiring)
        g_def = default_g_f(h, s, wiring)
        sweep[wiring] = np.array(
            [
                float(run(h, s, jnp.asarray(g_def), jnp.asarray(f), jnp.asarray(1e-3))[0])
                for f in sweep_f
            ]
        )
    scaling_dev = max(
        float(np.max(np.abs(sweep[w] * sweep_f / (sweep[w][5] * sweep_f[5]) - 1))) for w in WIRINGS
    )
    log(f"GBW sweep: max deviation of t*GBW from constant {scaling_dev:.1e}")

    # ODE path cross-check (diffrax) on channel 0, differential wiring, at 1 GHz.
    c = mimo.zf_precoder(h, s, inverters="differential", a0=A0, f_gbw=F_REF)
    t0 = time.time()
    ode = amcdyn.simulate(c, n_save=0, throw=False)
    ana = amcdyn.simulate_analytic(c, n_save=0, throw=False)
    ode_rel = float(ode.settling_time) / float(ana.settling_time) - 1
    log(
        f"ODE path: t_settle {float(ode.settling_time) * 1e9:.3f} ns vs analytic "
        f"{float(ana.settling_time) * 1e9:.3f} ns ({ode_rel:+.1e}), {int(ode.num_steps)} steps, "
        f"{time.time() - t0:.0f} s; solution vs digital ZF: rel_error {float(ana.rel_error):.1e}"
    )

    # Decisions: the analog precoded signal delivers the same symbols as digital ZF (noise-free
    # reception, so any difference would come from the analog error alone).
    same = []
    for h, s in problems:
        sol = amcdyn.simulate_analytic(mimo.zf_precoder(h, s, a0=A0, f_gbw=F_REF), n_save=0)
        r = h @ mimo.complex_from_real(sol.solution)
        same.append(bool(jnp.all(mimo.qam_detect(r, 16) == mimo.qam_detect(s, 16))))

    write_report(
        args,
        seeds,
        grid,
        sv,
        mp,
        results,
        sweep_f,
        sweep,
        scaling_dev,
        ode,
        ana,
        ode_rel,
        same,
        time.time() - t_start,
        problems,
    )
    log(f"wrote {args.out} ({time.time() - t_start:.0f} s)")


def write_report(
    args,
    seeds,
    grid,
    sv,
    mp,
    results,
    sweep_f,
    sweep,
    scaling_dev,
    ode,
    ana,
    ode_rel,
    same,
    wall,
    problems,
):
    lines = [
        f"# Analog ZF precoding, 16 x 128 massive MIMO: settling time vs GBW "
        f"({datetime.date.today().isoformat()})",
        "",
        f"Run: `python studies/zf_precoding.py{' --quick' if args.quick else ''}` "
        f"({len(seeds)} channels, {wall:.0f} s on {platform.machine()}, jax {jax.__version__}, "
        f"Python {sys.version.split()[0]}).",
        "",
        "Circuit: right GINV on the real-equivalent channel (32 x 256): 256 TIAs (feedback "
        "G_f) and 32 non-inverting op-amps, G0 = 100 uS, single-pole op-amps A0 = 1e5, all at "
        "the same GBW; i.i.d. CN(0,1) channels, 16-QAM symbols. Settling time = last exit from "
        "a band of tol x full scale (exact transient, `simulate_analytic`). With A0 fixed the "
        "ODE scales exactly as 1/GBW, so GBW for 20 ns = 1 GHz x t_settle(1 GHz) / 20 ns "
        f"(checked: t x GBW constant to {scaling_dev:.0e} over 0.1-2 GHz).",
        "",
        f"Channel: sigma_min(H) = {sv[:, -1].mean():.2f} (range {sv[:, -1].min():.2f}-"
        f"{sv[:, -1].max():.2f}), sigma_max = {sv[:, 0].mean():.2f}; Marchenko-Pastur edges "
        f"{mp[0]:.2f}, {mp[1]:.2f}.",
        "",
        "## Settling time at 1 GHz and the GBW needed for 20 ns",
        "",
        'Worst case over the channels (median in brackets). "GBW for 20 ns" uses the worst '
        "channel.",
        "",
        "| wiring | states | G_f / G0 | t_settle tol 1e-3 [ns] | GBW for 20 ns (1e-3) | "
        "t_settle tol 1e-2 [ns] | GBW for 20 ns (1e-2) |",
        "|---|---|---|---|---|---|---|",
    ]
    states = {"differential": 288, "ideal": 288, "opamp": 576}
    for wiring, rec in results.items():
        for label, g, data in (
            ("default", f"{np.median(rec['default_g_f']):.2f} (median)", rec["default"]),
            ("best fixed", f"{rec['best_g_f']:.2f}", rec["best"]),
        ):
            med3, max3 = stats(data[1e-3])
            med2, max2 = stats(data[1e-2])
            lines.append(
                f"| {wiring} ({label}) | {states[wiring]} | {g} | {max3 * 1e9:.2f} "
                f"({med3 * 1e9:.2f}) | {F_REF * max3 / T_TARGET / 1e6:.0f} MHz | "
                f"{max2 * 1e9:.2f} ({med2 * 1e9:.2f}) | {F_REF * max2 / T_TARGET / 1e6:.0f} MHz |"
            )
    lines += [
        "",
        "## Settling time (tol 1e-3) vs GBW, channel 0, default G_f",
        "",
        "| GBW [MHz] | " + " | ".join(WIRINGS) + " |",
        "|---|" + "---|" * len(WIRINGS),
    ]
    for k, f in enumerate(sweep_f):
        lines.append(
            f"| {f / 1e6:.0f} | "
            + " | ".join(f"{sweep[w][k] * 1e9:.2f} ns" for w in WIRINGS)
            + " |"
        )
    rel = [r for rec in results.values() for r in rec["rel_error"]]
    lines += [
        "",
        "## Checks",
        "",
        f"- ODE path (`simulate`, diffrax, channel 0, differential, 1 GHz): t_settle "
        f"{float(ode.settling_time) * 1e9:.3f} ns vs analytic {float(ana.settling_time) * 1e9:.3f}"
        f" ns ({ode_rel:+.1e}), status {ode.status}, {int(ode.num_steps)} steps.",
        f"- Precoded vector vs digital ZF (A0 = 1e5): rel_error {min(rel):.1e}-{max(rel):.1e} "
        "(the finite-gain error).",
        f"- Noise-free reception H x of the analog precoder decodes to the sent 16-QAM symbols on "
        f"{sum(same)}/{len(same)} channels.",
        f"- Every run settled: {all(rec['status_ok'] for rec in results.values())}.",
        "",
        "## Reading",
        "",
    ]
    f20 = {w: F_REF * max(results[w]["default"][1e-3]) / T_TARGET for w in WIRINGS}
    band = np.mean([max(r["default"][1e-2]) / max(r["default"][1e-3]) for r in results.values()])
    # G_f = G0 is the first grid point: how much slower than the default G_f (worst channel).
    slow_g0 = {
        w: float(np.max(results[w]["grid"][1e-3][:, 0]) / max(results[w]["default"][1e-3]))
        for w in WIRINGS
    }
    ratio = float(np.mean(sv[:, -1] / sv[:, 0]))
    rule = [
        3 * sv[k, 0] ** 2 / np.min(np.abs(np.asarray(mimo.real_equivalent_matrix(h))).sum(1))
        for k, (h, _) in enumerate(problems)
    ]
    lines += [
        "- In this model the 20 ns claim needs op-amps of a few hundred MHz GBW: "
        f"{f20['differential'] / 1e6:.0f} MHz (differential inputs, default G_f, tol 1e-3), "
        f"{f20['ideal'] / 1e6:.0f} MHz (ideal inverters), {f20['opamp'] / 1e6:.0f} MHz (op-amp "
        f"inverters); a 1 % band needs {100 * (1 - band):.0f} % less. The first two are in the "
        "class of the OPA690 (~300-500 MHz) named for the HP-INV hardware, consistent with the "
        "paper's \"optimized operational amplifiers\"; the paper's own GBW, band and sign "
        "wiring are not available.",
        f"- The loop is fast because the channel is well conditioned (sigma_min/sigma_max = "
        f"{ratio:.2f} for 16 x 128): the slowest pair decays at about wT G0 sigma_min / "
        "sqrt(d1 d2) when G_f critically damps it. G_f matters: at G_f = G0 the same circuit "
        f"settles {slow_g0['differential']:.1f}x (differential) / {slow_g0['ideal']:.1f}x "
        "(ideal) slower than at the default G_f (underdamped ringing); with op-amp inverters "
        + (
            "G_f = G0 is unstable (the loop latches)."
            if not np.isfinite(slow_g0["opamp"])
            else f"G_f = G0 is {slow_g0['opamp']:.1f}x slower."
        ),
        "- Real (op-amp) inverters put a third pole in the loop, which slows it: "
        f"{f20['opamp'] / f20['differential']:.1f}x the GBW of the differential wiring for the "
        "same 20 ns. Their stability rule (1.5 x 2 G0 sigma_max^2 / min column sum = "
        f"{np.median(rule):.2f} G0) is below the critical-damping G_f for this well-conditioned "
        "channel, so it does not bind here; for ill-conditioned matrices it forces a larger G_f "
        "and a slower loop. The differential wiring needs neither inverters (288 op-amps saved) "
        "nor a G_f bound.",
    ]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
