"""Study: memory and throughput of `monte_carlo` on a large variability run (N = 16 INV).

One nominal signed, well-conditioned INV (A = I + 0.8 R, rows of |R| summing to 1, single-pole
inverters, G0 = 100 uS, A0 = 1e5, f_GBW = 100 MHz). Each sample draws Gaussian device-to-device
variation (sigma = 5 %) on every conductance of G+ and G-, simulates the transient and returns
settling time, relative error, bits and status. float32 throughout.

Three simulation paths: `expm` (the exact propagator, default: the cheapest per sample),
`ode` (diffrax Tsit5 with a fixed `t_max`, no eigendecomposition) and `analytic`
(eigendecomposition). The run is chunked by
`monte_carlo`; the peak resident memory must stay bounded by the chunk, not grow with the number
of samples (the per-sample results themselves take 4 fields x 4 bytes x samples).

Usage: `OPENBLAS_NUM_THREADS=1 python studies/mc_memory.py [--samples 1000000] [--path expm]
[--chunk-size N] [--out mc.npz]`. Prints the numbers (and the summary) to stdout.
"""

import argparse
import json
import os
import resource
import sys
import time


os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from amcdyn._xla_flags import disable_cpu_eigen_threads  # noqa: E402


disable_cpu_eigen_threads()

import equinox as eqx
import jax
import numpy as np

import amcdyn
from amcdyn._montecarlo import monte_carlo


N = 16
SIGMA = 0.05


def rss_mib() -> float:
    """Current resident set size (MiB), from /proc (Linux); nan elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024**2 if sys.platform == "darwin" else r / 1024


def nominal(seed=0):
    rng = np.random.default_rng(seed)
    r = rng.uniform(-1, 1, (N, N))
    r[np.arange(N), np.arange(N)] = 0
    r /= np.abs(r).sum(-1, keepdims=True)
    a = (np.eye(N) + 0.8 * r).astype(np.float32)
    b = rng.uniform(-1, 1, N).astype(np.float32)
    return amcdyn.INV.from_matrix(a, b)


def make_sample_fn(circuit, path):
    variation = amcdyn.Variation(np.float32(SIGMA))
    # One t_max for every sample (the ODE path needs it): the nominal default with 50 % margin.
    t_max = 1.5 * float(amcdyn.simulate_analytic(circuit, n_save=0).t_max)

    def sample_fn(key):
        kp, kn = jax.random.split(key)
        c = eqx.tree_at(
            lambda c: (c.g_pos, c.g_neg),
            circuit,
            (variation(circuit.g_pos, key=kp), variation(circuit.g_neg, key=kn)),
        )
        if path == "expm":
            sol = amcdyn.simulate_expm(c, t_max=t_max, stability=False, throw=False)
        elif path == "ode":
            sol = amcdyn.simulate(c, t_max=t_max, n_save=0, stability=False, throw=False)
        else:
            sol = amcdyn.simulate_analytic(c, t_max=t_max, n_save=0, throw=False)
        return {
            "settling_time": sol.settling_time,
            "rel_error": sol.rel_error,
            "bits": sol.bits,
            "result": sol.result,
        }

    return sample_fn, t_max


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=1_000_000)
    p.add_argument("--path", choices=("expm", "ode", "analytic"), default="expm")
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--out", default=None, help="resumable .npz (default: none, in memory only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-rel-error", type=float, default=0.1, help="yield bound (default 0.1)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    rss_start = rss_mib()
    circuit = nominal(args.seed)
    sample_fn, t_max = make_sample_fn(circuit, args.path)
    config = {
        "study": "mc_memory",
        "n": N,
        "sigma": SIGMA,
        "path": args.path,
        "seed": args.seed,
        "t_max": t_max,
        "dtype": "float32",
    }
    t = time.perf_counter()
    res = monte_carlo(
        sample_fn,
        jax.random.key(args.seed),
        args.samples,
        chunk_size=args.chunk_size,
        out=args.out,
        config=config,
        progress=not args.no_progress,
    )
    wall = time.perf_counter() - t
    s = res.summary(max_rel_error=args.max_rel_error)
    report = {
        "samples": args.samples,
        "path": args.path,
        "n": N,
        "dtype": str(res["settling_time"].dtype),
        "devices": f"{res.stats['n_devices']} x {jax.devices()[0].platform}",
        "cpus": os.cpu_count(),
        "chunk_size": res.stats["chunk_size"],
        "compile_s": round(res.stats["compile_s"], 2),
        "run_s": round(res.stats["run_s"], 2),
        "wall_s": round(wall, 2),
        "samples_per_s": round(res.stats["samples_per_s"], 1),
        "rss_start_mib": round(rss_start, 1),
        "rss_end_mib": round(rss_mib(), 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "results_mib": round(sum(x.nbytes for x in res.samples.values()) / 2**20, 2),
        "yield": s["yield"],
        "max_rel_error": args.max_rel_error,
        "status_counts": s["status_counts"],
        "settling_time_s": {k: s["fields"]["settling_time"][k] for k in ("p5", "p50", "p95")},
        "rel_error": {k: s["fields"]["rel_error"][k] for k in ("p5", "p50", "p95")},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
