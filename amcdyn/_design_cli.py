"""`amcdyn design inv`: gradient-based design of an INV circuit from the command line.

    amcdyn design inv --matrix A.npy --rhs b.npy [--power-budget W] [--target-bits B]
                      [--wire-r R] [--robust --samples 256 --sigma 0.05] [--steps K]
                      [--variables gbw_main,gbw_inv,col_scale] [--json] [--export design.json]

`--power-budget` defaults to the initial (naive, G = G0 A, equal GBW) design's amplifier
power, so the default comparison is at equal power. Exit status: 0 when the optimized design
settled, 3 when it did not, 2 for bad input.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np

from ._cli import (
    EXIT_NOT_SETTLED,
    EXIT_SETTLED,
    EXIT_USAGE,
    UsageError,
    _float_type,
    _int_type,
    _real_type,
    _seed_type,
    check_invertible,
    resolve_matrix,
    resolve_vector,
    to_json,
)


_DESCRIPTION = (
    "Optimize an INV circuit's conductance mapping (G0, per-column scaling, offset, input "
    "conductance) and per-amplifier gain-bandwidth with optax (Adam) for a smooth settling-"
    "time surrogate, under a total amplifier-power budget; reports the initial (naive) and "
    "optimized designs side by side (true settling time from a transient, relative error, "
    "power, energy)."
)

_VAR_FLAGS = {
    "variables": "--variables",
    "power_budget": "--power-budget",
    "target_bits": "--target-bits",
    "gbw_bounds": "--gbw",
    "steps": "--steps",
    "tol": "--tol",
    "samples": "--samples",
    "sigma": "--sigma",
    "quantile": "--quantile",
    "sharpen": "--sharpen",
    "starts": "--starts",
    "a": "--matrix",
    "b": "--rhs",
    "g0": "--g0",
    "f_gbw": "--gbw",
    "a0": "--a0",
    "r_w": "--wire-r",
    "circuit": "--matrix",
}


def add_design_parser(commands) -> None:
    """Add `design inv` to the top-level subparsers object `commands` of `amcdyn`."""
    fmt = argparse.RawDescriptionHelpFormatter
    cmd = commands.add_parser(
        "design",
        help="optimize a circuit's mapping and amplifiers (optax)",
        description=_DESCRIPTION,
        formatter_class=fmt,
    )
    circuits = cmd.add_subparsers(dest="circuit", metavar="CIRCUIT")
    circuits.required = True
    p = circuits.add_parser(
        "inv",
        help="design an INV circuit (closed-loop solve of A x = b)",
        description=_DESCRIPTION,
        formatter_class=fmt,
    )
    p.add_argument("--matrix", required=True, help="A (.npy/.csv or a generator spec)")
    p.add_argument(
        "--rhs", metavar="FILE", default=None, help="b (.npy/.csv); default uniform(-1,1), seed 0"
    )
    p.add_argument(
        "--power-budget",
        type=_float_type(),
        default=None,
        metavar="W",
        dest="power_budget",
        help="total amplifier power (W); default the initial design's",
    )
    p.add_argument(
        "--target-bits",
        type=_float_type(),
        default=None,
        metavar="B",
        dest="target_bits",
        help="precision constraint rel_error <= 2^-B (penalty)",
    )
    p.add_argument(
        "--wire-r",
        type=_real_type(nonnegative=True),
        default=None,
        metavar="OHM",
        dest="r_w",
        help="wire resistance per cell segment (Ω)",
    )
    p.add_argument(
        "--robust",
        action="store_true",
        help="minimize the --quantile of the settling surrogate over variation",
    )
    p.add_argument(
        "--samples",
        type=lambda s: _int_type(s, lo=2),
        default=256,
        help="Monte Carlo samples for --robust (default 256)",
    )
    p.add_argument(
        "--sigma",
        type=_real_type(nonnegative=True),
        default=0.05,
        help="relative conductance variation for --robust (default 0.05)",
    )
    p.add_argument(
        "--quantile",
        type=_float_type(below_one=True),
        default=0.95,
        help="quantile minimized with --robust (default 0.95)",
    )
    p.add_argument("--steps", type=_int_type, default=100, help="optimizer steps (default 100)")
    p.add_argument(
        "--lr", type=_float_type(), default=0.05, help="Adam learning rate (default 0.05)"
    )
    p.add_argument(
        "--optimizer",
        choices=("adam", "bfgs"),
        default="adam",
        help="adam (optax, --lr) or bfgs (quasi-Newton; follows narrow notch valleys)",
    )
    p.add_argument(
        "--starts",
        type=_int_type,
        default=1,
        help="runs from the initial design and a Latin hypercube of starts; the best is kept "
        "(default 1: the initial design only)",
    )
    p.add_argument(
        "--sharpen",
        default=None,
        metavar="B1,B2,...",
        help="sharpness continuation after the run(s), e.g. 0.1,0.05 (decreasing, below 0.25)",
    )
    p.add_argument(
        "--variables",
        default="gbw_main,gbw_inv,col_scale",
        help="comma-separated design variables from g0, col_scale, g_offset, g_in, "
        "gbw_main, gbw_inv (default gbw_main,gbw_inv,col_scale)",
    )
    p.add_argument("--g0", type=_float_type(), default=1e-4, help="initial G0 (S)")
    p.add_argument(
        "--gbw",
        type=_float_type(),
        default=1e8,
        help="initial gain-bandwidth of every amplifier (Hz)",
    )
    p.add_argument(
        "--a0", type=_float_type(allow_inf=True), default=1e5, help="op-amp DC gain (default 1e5)"
    )
    p.add_argument("--inverters", choices=("opamp", "ideal"), default="opamp")
    p.add_argument(
        "--input-mode", choices=("current", "voltage"), default="current", dest="input_mode"
    )
    p.add_argument(
        "--tol",
        type=_float_type(below_one=True),
        default=1e-3,
        help="relative settling band (default 1e-3)",
    )
    p.add_argument("--seed", type=_seed_type, default=0, help="PRNG seed (Monte Carlo)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--export",
        metavar="FILE",
        default=None,
        help="write the optimized design (conductances, per-amplifier GBW) as JSON",
    )
    p.set_defaults(_parser=p)


def _map_error(e: ValueError) -> UsageError:
    import re

    msg = str(e)
    m = re.search(r"`(\w+)`", msg)
    if m and m.group(1) in _VAR_FLAGS:
        return UsageError(_VAR_FLAGS[m.group(1)], msg)
    return UsageError(None, msg)


def _default_rhs(a: np.ndarray) -> np.ndarray:
    b = np.random.default_rng(0).uniform(-1, 1, a.shape[0])
    return b / np.max(np.abs(np.linalg.solve(a, b)))


def _run(args: argparse.Namespace) -> dict:
    import jax.random as jr
    import optax

    from ._circuits import INV
    from ._design import design, design_multistart

    a = resolve_matrix(args.matrix)
    if a.shape[0] != a.shape[1]:
        raise UsageError("--matrix", f"INV needs a square matrix, got shape {a.shape}")
    check_invertible(a)
    n = a.shape[0]
    b = (
        _default_rhs(a)
        if args.rhs is None
        else resolve_vector(args.rhs, "--rhs", n, "an INV of this matrix")
    )
    variables = tuple(v.strip() for v in args.variables.split(",") if v.strip())
    if args.export is not None:
        folder = os.path.dirname(os.path.abspath(args.export))
        if not os.path.isdir(folder) or os.path.isdir(args.export):
            raise UsageError("--export", f"cannot write {args.export!r}")
    try:
        circuit = INV.from_matrix(
            a,
            b,
            g0=args.g0,
            f_gbw=args.gbw,
            a0=args.a0,
            inverters=args.inverters,
            input_mode=args.input_mode,
            r_w=args.r_w,
        )
        if circuit.inverter is None:
            variables = tuple(v for v in variables if v != "gbw_inv")
        from ._design import Objective

        robust = None
        if args.robust:
            robust = dict(samples=args.samples, sigma=args.sigma, quantile=args.quantile)
        sharpen = ()
        if args.sharpen is not None:
            try:
                sharpen = tuple(float(s) for s in args.sharpen.split(",") if s.strip())
            except ValueError:
                raise UsageError(
                    "--sharpen", f"expected comma-separated numbers, got {args.sharpen!r}"
                ) from None
        kwargs = dict(
            variables=variables,
            objective=Objective(target_bits=args.target_bits),
            optimizer="bfgs" if args.optimizer == "bfgs" else optax.adam(args.lr),
            steps=args.steps,
            power_budget=args.power_budget,
            robust=robust,
            key=jr.key(args.seed),
            tol=args.tol,
            sharpen=sharpen,
        )
        if args.starts == 1:
            res = design(circuit, **kwargs)
        else:
            res = design_multistart(circuit, starts=args.starts, seed=args.seed, **kwargs)
    except ValueError as e:
        raise _map_error(e) from None
    if args.export is not None:
        try:
            res.export(args.export)
        except OSError as e:
            raise UsageError("--export", f"cannot write: {e}") from None
    report = {"circuit": "inv", "matrix": args.matrix, "n": n, **res.summary()}
    if args.export is not None:
        report["export"] = args.export
    return report


def _si(x, unit):
    if x is None or not math.isfinite(x):
        return str(x)
    for scale, prefix in ((1e-12, "p"), (1e-9, "n"), (1e-6, "µ"), (1e-3, "m"), (1.0, "")):
        if abs(x) < scale * 1000:
            return f"{x / scale:.4g} {prefix}{unit}"
    return f"{x:.4g} {unit}"


def _format(r: dict) -> str:
    rows = [
        ("settling time", "settling_time_s", "s"),
        ("rel. error", "rel_error", ""),
        ("amp. power", "power_w", "W"),
        ("energy/solve", "energy_j", "J"),
    ]
    if "mc_settling_p95_s" in r["optimized"]:
        rows.append(("MC p95 settling", "mc_settling_p95_s", "s"))
    lines = [
        f"amcdyn design inv {r['matrix']} (n={r['n']}): variables "
        f"{', '.join(r['variables'])}; power budget {_si(r['power_budget_w'], 'W')}",
        f"{'':18s}{'initial':>16s}{'optimized':>16s}",
    ]
    for label, k, unit in rows:
        x0, x1 = r["initial"].get(k), r["optimized"].get(k)
        fmt = (lambda x: f"{x:.3g}") if unit == "" else (lambda x: _si(x, unit))
        lines.append(f"{label:18s}{fmt(x0):>16s}{fmt(x1):>16s}")
    lines.append(f"status            {r['initial']['status']:>16s}{r['optimized']['status']:>16s}")
    lines.append(
        f"loss {r['loss_initial']:.4g} -> {r['loss_final']:.4g} in {r['steps']} "
        f"evaluations ({r['wall_time_s']:.1f} s)"
    )
    if "export" in r:
        lines.append(f"design written to {r['export']}")
    return "\n".join(lines)


def run_design(args: argparse.Namespace) -> int:
    """Run `amcdyn design inv`; returns the exit status."""
    import jax

    prev_x64 = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        try:
            report = _run(args)
        except UsageError as err:
            args._parser.print_usage(sys.stderr)
            print(f"{args._parser.prog}: error: {err}", file=sys.stderr)
            return EXIT_USAGE
    finally:
        jax.config.update("jax_enable_x64", prev_x64)
    if args.json:
        print(to_json(report))
    else:
        print(_format(report))
    return EXIT_SETTLED if report["optimized"]["status"] == "settled" else EXIT_NOT_SETTLED
