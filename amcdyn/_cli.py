"""The `amcdyn` command line: simulate one circuit of the library, or a Monte Carlo of it.

    amcdyn                                     # the default case: INV on random-dd:8
    amcdyn simulate inv --matrix A.npy --rhs b.npy [options]
    amcdyn simulate mvm --matrix A.csv --input x.csv [--gf G] [options]
    amcdyn simulate ginv --matrix X.npy --rhs y.npy [--gf G] [--side left|right] [options]
    amcdyn simulate ridge --matrix X.npy --rhs y.npy --lam 0.1 [options]
    amcdyn simulate zf-detect --users 4 --antennas 16 --snr-db 20 --qam 16 [options]
    amcdyn simulate zf-precode --matrix H.npy --rhs s.npy [options]
    amcdyn simulate dft --size 8 [--input x.npy] [--inverse] [options]
    amcdyn mc inv --matrix A.npy --rhs b.npy --samples 10000 --sigma 0.05 [options]
    amcdyn mc ginv --matrix X.npy --samples 1000 --sigma 0.05 [options]

Every circuit is one entry of `CIRCUITS` (its flags, how its inputs are read, how the circuit
is built and what its report adds); `simulate` and `mc` share the entries, so a circuit takes
the same flags in both. `amcdyn mc` covers the linear circuits (inv, mvm, ginv, ridge,
zf-detect, zf-precode, dft), cs and egv with --method ode, and blockamc and macro through the
generic engine (`CircuitSpec.mc_sample`); hpinv (a refinement loop that stops on a concrete
test) runs its samples in a host loop (`CircuitSpec.mc_run`, `amcdyn._hpinv.hpinv_monte_carlo`)
with the same flags, progress, resumable `--out` and JSON fields. An entry without an
implementation is listed as "not implemented yet" and exits with status 2.

Both commands take the same non-ideality flags (`--sigma`, `--variation`, `--levels`,
`--gmin`, `--gmax`, `--window-mode`, `--wire-r`, `--offset-v`, `--f-p2`, `--seed`);
`simulate` evaluates one random instance (sample 0 of `mc` with the same seed), `mc` many.
`--offset-v` is a fixed offset on every amplifier for `simulate` and the standard deviation
of a random per-amplifier offset for `mc`.

Exit status of `simulate`: 0 when the circuit settled, 3 when the simulation completed but
the circuit did not settle (`not_settled`, `unstable`, `nonfinite`, `max_steps`). Exit status
of `mc`: 0 when the run completed (whatever its yield). Both: 2 for bad input (an
argparse-style message naming the argument is written to stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import _matrices


EXIT_SETTLED = 0
EXIT_USAGE = 2
EXIT_NOT_SETTLED = 3

DEFAULT_MATRIX = "random-dd:8"
DEFAULT_ARGV = ("simulate", "inv", "--matrix", DEFAULT_MATRIX)

# Library argument names (as they appear in backticks in its ValueErrors) -> CLI flags.
_FLAGS = {
    "inv": {
        "a": "--matrix",
        "b": "--rhs",
        "g0": "--g0",
        "a0": "--a0",
        "f_gbw": "--gbw",
        "tol": "--tol",
        "t_max": "--t-max",
        "max_steps": "--max-steps",
        "inverters": "--inverters",
        "inverter_a0": "--a0",
        "inverter_f_gbw": "--gbw",
        "input_mode": "--input-mode",
        "g_in": "--g-in",
        "r_w": "--wire-r",
        "f_p2": "--f-p2",
        "inverter_f_p2": "--f-p2",
        "v_os": "--offset-v",
        "inverter_v_os": "--offset-v",
        "v_sat": "--v-sat",
        "inverter_v_sat": "--v-sat",
        "slew_rate": "--slew-rate",
        "inverter_slew_rate": "--slew-rate",
        "c_node": "--c-node",
        "method": "--method",
        "offset_sigma": "--offset-v",
        "n_samples": "--samples",
        "chunk_size": "--chunk-size",
        "out": "--out",
    },
    "mvm": {
        "a": "--matrix",
        "x": "--input",
        "g0": "--g0",
        "a0": "--a0",
        "f_gbw": "--gbw",
        "tol": "--tol",
        "t_max": "--t-max",
        "max_steps": "--max-steps",
        "g_f": "--gf",
        "r_w": "--wire-r",
        "f_p2": "--f-p2",
        "v_os": "--offset-v",
        "v_sat": "--v-sat",
        "slew_rate": "--slew-rate",
        "method": "--method",
        "offset_sigma": "--offset-v",
        "n_samples": "--samples",
        "chunk_size": "--chunk-size",
        "out": "--out",
    },
}

_NOTES = {
    "settled": "last exit from the settling band",
    "not_settled": "inf: the outputs did not settle within t_max",
    "unstable": "nan: the circuit is unstable (an eigenvalue has positive real part)",
    "nonfinite": "nan: the transient produced non-finite values",
    "max_steps": "inf: the ODE solver reached max_steps before t_max",
}


_HINTS = {
    "not_settled": "increase --t-max (and --max-steps), or loosen --tol",
    "unstable": "the linearized circuit has an eigenvalue with positive real part; INV needs "
    "S^-1 A positive-stable (e.g. A symmetric positive definite)",
    "nonfinite": "the transient overflowed; check the matrix scaling and --t-max",
    "max_steps": "raise --max-steps, or use --method analytic",
}


class UsageError(Exception):
    """Bad command-line input: reported as `argument FLAG: message`, exit status 2."""

    def __init__(self, flag: str | None, message: str):
        super().__init__(message)
        self.flag = flag
        self.message = message

    def __str__(self) -> str:
        return f"argument {self.flag}: {self.message}" if self.flag else self.message


# ---------------------------------------------------------------------------------------
# argument parsing
# ---------------------------------------------------------------------------------------


def _float_type(*, allow_inf: bool = False, below_one: bool = False):
    def parse(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if math.isnan(x):
            raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
        if x <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        if math.isinf(x) and not allow_inf:
            raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
        if below_one and x >= 1:
            raise argparse.ArgumentTypeError(f"must be < 1 (a relative band), got {text!r}")
        return x

    return parse


def _int_type(text: str, lo: int = 1) -> int:
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if k < lo:
        raise argparse.ArgumentTypeError(f"must be >= {lo}, got {text!r}")
    return k


def _levels_type(text: str) -> int:
    return _int_type(text, lo=2)


def _seed_type(text: str) -> int:
    return _int_type(text, lo=0)


def _real_type(*, nonnegative: bool = False):
    """A finite number (>= 0 with `nonnegative`)."""

    def parse(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(x):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if nonnegative and x < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
        return x

    return parse


_EPILOG = """\
matrices: a .npy or .csv file, or a built-in generator name:n[:seed=s] with name one of
  {gens} (e.g. random-dd:16, wishart:32:seed=3).
exit status: 0 settled; 3 not settled, unstable, non-finite or max_steps (the report says
  which); 2 bad input.
"""


def _common(
    p: argparse.ArgumentParser,
    *,
    mc: bool = False,
    matrix_help: str | None = f"the matrix A: .npy/.csv file or generator spec (default "
    f"{DEFAULT_MATRIX})",
    matrix_default: str | None = DEFAULT_MATRIX,
) -> None:
    """The flags every circuit takes (`--matrix` only when `matrix_help` is given)."""
    if matrix_help is not None:
        p.add_argument(
            "--matrix", default=matrix_default, metavar="FILE|SPEC", help=matrix_help
        )
    p.add_argument(
        "--g0", type=_float_type(), default=None, metavar="S",
        help="conductance unit G0 in siemens (default 1e-4 = 100 uS; with a conductance "
        "window, gmax/max|A|: the largest entry maps to --gmax)",
    )
    p.add_argument(
        "--a0", type=_float_type(allow_inf=True), default=1e5, metavar="GAIN",
        help="op-amp DC open-loop gain A0 (default 1e5; inf = ideal integrator)",
    )
    p.add_argument(
        "--gbw", type=_float_type(), default=1e8, metavar="HZ",
        help="op-amp gain-bandwidth product f_GBW in Hz (default 1e8 = 100 MHz)",
    )
    p.add_argument(
        "--tol", type=_float_type(below_one=True), default=1e-3, metavar="EPS",
        help="relative settling band epsilon (default 1e-3)",
    )
    if mc:
        p.add_argument(
            "--method", choices=("expm", "ode", "analytic"), default="expm",
            help="expm: exact propagator (default, fastest in batches); ode: diffrax "
            "integration; analytic: eigendecomposition closed form",
        )
        p.add_argument(
            "--t-max", type=_float_type(), default=None, metavar="S", dest="t_max",
            help="end of the simulated interval in seconds, the same for every sample "
            "(default: 2x the nominal circuit's, from its slowest eigenvalue)",
        )
    else:
        p.add_argument(
            "--method", choices=("ode", "analytic"), default="ode",
            help="ode: diffrax integration (default); analytic: eigendecomposition closed form",
        )
        p.add_argument(
            "--t-max", type=_float_type(), default=None, metavar="S", dest="t_max",
            help="end of the simulated interval in seconds (default: from the slowest "
            "eigenvalue)",
        )
    p.add_argument(
        "--max-steps", type=_int_type, default=16384, metavar="N", dest="max_steps",
        help="ODE step budget (method ode; default 16384)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--plot", metavar="PNG", default=None,
        help="write histograms of settling time and relative error" if mc
        else "write the waveform figure",
    )
    _nonideal(p, mc=mc)
    if mc:
        _mc_options(p)


def _nonideal(p: argparse.ArgumentParser, *, mc: bool) -> None:
    """The non-ideality flags shared by `simulate` and `mc`."""
    g = p.add_argument_group(
        "non-idealities",
        "Programming: target conductances G = G0*A+- -> window/levels -> variation (per device). "
        + ("Every sample draws its own variation and offsets (key fold_in(key(seed), i))."
           if mc else "One random instance: sample 0 of `amcdyn mc` with the same --seed."),
    )
    g.add_argument(
        "--sigma", type=_real_type(nonnegative=True), default=0.0, metavar="SIGMA",
        help="device-to-device conductance variation (relative, default 0: none)",
    )
    g.add_argument(
        "--variation", choices=("gaussian", "lognormal"), default="gaussian",
        help="gaussian: G(1 + sigma xi) clipped at 0 (default); lognormal: G exp(sigma xi)",
    )
    g.add_argument(
        "--levels", type=_levels_type, default=None, metavar="L",
        help="quantize every device onto L uniform levels in [gmin, gmax] (e.g. 8 = 3 bit)",
    )
    g.add_argument(
        "--gmin", type=_real_type(nonnegative=True), default=None, metavar="S",
        help="conductance window low end in S (default 0.5e-6 when a window is used)",
    )
    g.add_argument(
        "--gmax", type=_float_type(), default=None, metavar="S",
        help="conductance window high end in S (default 35e-6 when a window is used)",
    )
    g.add_argument(
        "--window-mode", choices=("clip", "error"), default=None, dest="window_mode",
        help="targets outside [gmin, gmax]: clip them with a warning (default) or refuse",
    )
    g.add_argument(
        "--wire-r", type=_real_type(nonnegative=True), default=None, metavar="OHM",
        dest="wire_r",
        help="wire resistance per cell-to-cell segment of rows and columns in ohm "
        "(e.g. 1.73 for 40 nm; default/0: ideal crossbar)",
    )
    if mc:
        g.add_argument(
            "--offset-v", type=_real_type(nonnegative=True), default=None, metavar="V",
            dest="offset_v",
            help="standard deviation (V) of a random input offset drawn per amplifier and "
            "sample (main amplifiers and inverters; default: none)",
        )
    else:
        g.add_argument(
            "--offset-v", type=_real_type(), default=None, metavar="V", dest="offset_v",
            help="fixed input offset (V) on every amplifier (main amplifiers and inverters)",
        )
    g.add_argument(
        "--f-p2", type=_float_type(), default=None, metavar="HZ", dest="f_p2",
        help="second pole of every op-amp in Hz (default: single pole)",
    )
    g.add_argument(
        "--v-sat", type=_float_type(), default=None, metavar="V", dest="v_sat",
        help="output rail of every op-amp in V (nonlinear: --method ode; inv, mvm)",
    )
    g.add_argument(
        "--slew-rate", type=_float_type(), default=None, metavar="V/S", dest="slew_rate",
        help="slew-rate limit of every op-amp in V/s (nonlinear: --method ode; inv, mvm)",
    )
    g.add_argument(
        "--c-node", type=_float_type(), default=None, metavar="F", dest="c_node",
        help="parasitic capacitance of every summing node in F (inv; not with --wire-r)",
    )
    g.add_argument(
        "--seed", type=_seed_type, default=0, metavar="S",
        help="random seed of the variation (and offsets) (default 0)",
    )


def _mc_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Monte Carlo")
    g.add_argument(
        "--samples", type=_int_type, default=1000, metavar="N",
        help="number of samples (default 1000)",
    )
    g.add_argument(
        "--out", metavar="NPZ", default=None,
        help="save the samples to this .npz after every chunk; an existing file of the same "
        "configuration is resumed, one of another configuration is refused",
    )
    g.add_argument(
        "--chunk-size", type=_int_type, default=None, metavar="N", dest="chunk_size",
        help="samples per compiled call (default: automatic, at most 4096)",
    )
    g.add_argument(
        "--min-bits", type=_float_type(), default=None, metavar="B", dest="min_bits",
        help="yield criterion: settled and bits >= B (rel. error <= 2^-B); default: settled",
    )
    g.add_argument(
        "--no-progress", action="store_false", dest="progress",
        help="no progress line on stderr",
    )


def build_parser() -> argparse.ArgumentParser:
    epilog = _EPILOG.format(gens=", ".join(_matrices.GENERATORS))
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="amcdyn",
        description=(
            "Transient simulation of RRAM analog-matrix-computing circuits. Without arguments, "
            f"runs the default case: amcdyn {' '.join(DEFAULT_ARGV)}."
        ),
        epilog=epilog,
        formatter_class=fmt,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"amcdyn {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    sim = commands.add_parser(
        "simulate", help="simulate one circuit", description="Simulate one circuit.",
        epilog=epilog, formatter_class=fmt,
    )
    _add_circuits(sim, epilog, fmt, mc=False)
    mc_epilog = epilog.split("exit status:")[0] + _MC_EPILOG
    mc = commands.add_parser(
        "mc", help="Monte Carlo of one circuit under variation and offsets",
        description="Monte Carlo of one circuit: every sample programs the conductances with "
        "its own variation (and draws its own op-amp offsets), and reports settling time, "
        "relative error, bits, energy and status; the summary gives quantiles and the yield. "
        "--offset-v is the standard deviation of a random offset per amplifier here (a fixed "
        "offset for `amcdyn simulate`).",
        epilog=mc_epilog, formatter_class=fmt,
    )
    _add_circuits(mc, mc_epilog, fmt, mc=True)
    from ._design_cli import add_design_parser

    add_design_parser(commands)
    return parser


_MC_EPILOG = """\
Monte Carlo: sample i uses the key fold_in(key(seed), i), so results do not depend on
  --chunk-size and an interrupted run with --out resumes where it stopped.
exit status: 0 the run completed (whatever its yield); 2 bad input.
"""


def _add_circuits(cmd: argparse.ArgumentParser, epilog: str, fmt, *, mc: bool) -> None:
    """One sub-command per entry of `CIRCUITS`, the same for `simulate` and `mc`."""
    circuits = cmd.add_subparsers(dest="circuit", metavar="CIRCUIT")
    circuits.required = True
    for spec in CIRCUITS.values():
        sub = circuits.add_parser(
            spec.name,
            help=spec.help if spec.implemented else f"{spec.help} (not implemented yet)",
            description=spec.description if spec.implemented
            else f"{spec.description} Not implemented yet.",
            epilog=epilog,
            formatter_class=fmt,
        )
        if spec.implemented:
            spec.add_arguments(sub, mc)
        else:  # accept anything: the run reports "not implemented yet" (exit status 2)
            sub.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        sub.set_defaults(_parser=sub)


def _args_inv(p: argparse.ArgumentParser, mc: bool) -> None:
    _common(p, mc=mc)
    p.add_argument(
        "--rhs", metavar="FILE", default=None,
        help="right-hand side b (.npy/.csv); default uniform(-1,1), seed 0, scaled so "
        "max|A^-1 b| = 1",
    )
    p.add_argument(
        "--inverters", choices=("opamp", "ideal"), default="opamp",
        help="inverters for the negative part of A (default opamp)",
    )
    p.add_argument(
        "--input-mode", "--input", choices=("current", "voltage"), default="current",
        dest="input_mode",
        help="inject b as currents G0*b (default) or as voltages through --g-in",
    )
    p.add_argument(
        "--g-in", type=_float_type(), default=None, metavar="S", dest="g_in",
        help="input conductance for --input-mode voltage (default G0)",
    )


def _args_mvm(p: argparse.ArgumentParser, mc: bool) -> None:
    _common(p, mc=mc)
    p.add_argument(
        "--input", metavar="FILE", default=None,
        help="input vector x (.npy/.csv); default uniform(-1,1), seed 0",
    )
    p.add_argument(
        "--gf", type=_float_type(), default=None, metavar="S", dest="g_f",
        help="TIA feedback conductance G_f in siemens (default G0)",
    )


def _args_ginv_loop(p: argparse.ArgumentParser) -> None:
    """`--gf` and `--inverters` of the two-stage GINV/Ridge loop (also ZF detection/precoding)."""
    p.add_argument(
        "--gf", type=_float_type(), default=None, metavar="S", dest="g_f",
        help="TIA feedback conductance G_f in siemens: sets the speed and damping, not the "
        "answer (default: critical damping of the slowest singular pair)",
    )
    p.add_argument(
        "--inverters", choices=("opamp", "ideal", "differential"), default="opamp",
        help="sign handling of the negative entries: op-amp inverters (default), ideal "
        "inverters, or differential (negative arrays on the other op-amp input)",
    )


def _args_ginv(p: argparse.ArgumentParser, mc: bool, *, ridge: bool = False) -> None:
    _common(
        p, mc=mc, matrix_default=None,
        matrix_help="the real matrix X (required): .npy/.csv file or generator spec; tall "
        "(rows >= columns) for --side left, wide for --side right",
    )
    p.add_argument(
        "--rhs", metavar="FILE", default=None,
        help="right-hand side y, one entry per row of X (.npy/.csv); default uniform(-1,1), "
        "seed 0",
    )
    p.add_argument(
        "--side", choices=("left", "right"), default="left",
        help="left: least squares argmin ||Xw - y|| (X tall, default); right: minimum-norm "
        "solution of X w = y (X wide)",
    )
    if ridge:
        p.add_argument(
            "--lam", type=_real_type(nonnegative=True), default=None, metavar="LAMBDA",
            help="regularization lambda >= 0 (required; dimensionless, set by "
            "G_lambda = lambda G0^2/G_f)",
        )
    _args_ginv_loop(p)


def _args_zf(p: argparse.ArgumentParser, mc: bool, *, precode: bool) -> None:
    shape = "(users, antennas)" if precode else "(antennas, users)"
    _common(
        p, mc=mc, matrix_default=None,
        matrix_help=f"complex channel H {shape} as .npy (complex allowed) or .csv (real); "
        "default: i.i.d. Rayleigh from --users, --antennas, --channel-seed",
    )
    g = p.add_argument_group("MIMO")
    g.add_argument(
        "--users", type=_int_type, default=None, metavar="K",
        help="number of single-antenna users K (default 4; not with --matrix)",
    )
    g.add_argument(
        "--antennas", type=_int_type, default=None, metavar="M",
        help="base-station antennas M >= K (default 16; not with --matrix)",
    )
    g.add_argument(
        "--qam", type=int, choices=(4, 16), default=16,
        help="square QAM order of the symbols (default 16)",
    )
    g.add_argument(
        "--snr-db", type=_real_type(), default=20.0, metavar="DB", dest="snr_db",
        help="SNR = E_s/N0 in dB of the receiver noise (default 20)",
    )
    g.add_argument(
        "--channel-seed", type=_seed_type, default=0, metavar="S", dest="channel_seed",
        help="seed of the channel, symbols and noise (default 0; --seed is the variation's)",
    )
    g.add_argument(
        "--rhs", metavar="FILE", default=None,
        help=("symbols s to precode, one per user" if precode
              else "received vector y, one entry per antenna")
        + " (.npy, complex allowed; needs --matrix); default: random QAM symbols"
        + ("" if precode else " through H plus noise"),
    )
    _args_ginv_loop(p)


def _args_dft(p: argparse.ArgumentParser, mc: bool) -> None:
    _common(p, mc=mc, matrix_help=None)
    p.add_argument(
        "--size", type=_int_type, default=8, metavar="N",
        help="DFT length N (default 8): a (2N x 2N) real-equivalent MVM",
    )
    p.add_argument(
        "--input", metavar="FILE", default=None,
        help="input vector x of length N (.npy, complex allowed, or .csv); default "
        "uniform(-1,1) real and imaginary parts, seed 0",
    )
    p.add_argument("--inverse", action="store_true", help="the IDFT instead of the DFT")
    p.add_argument(
        "--norm", choices=("backward", "ortho", "forward"), default="backward",
        help="scaling as numpy.fft (default backward: outputs grow like N max|x| V, "
        "scale them with --gf)",
    )
    p.add_argument(
        "--gf", type=_float_type(), default=None, metavar="S", dest="g_f",
        help="TIA feedback conductance G_f in siemens (default G0)",
    )


# ---------------------------------------------------------------------------------------
# input loading and validation
# ---------------------------------------------------------------------------------------

_EXTS = (".npy", ".csv", ".txt")


def load_array(path: str, flag: str, *, complex_ok: bool = False) -> np.ndarray:
    """Read a real array from a `.npy` file or a comma/whitespace separated text file
    (complex from a `.npy` file with `complex_ok`)."""
    ext = os.path.splitext(path)[1].lower()
    if not os.path.exists(path):
        raise UsageError(flag, f"file not found: {path!r}")
    if os.path.isdir(path):
        raise UsageError(flag, f"{path!r} is a directory, not a .npy or .csv file")
    if ext not in _EXTS:
        raise UsageError(flag, f"cannot read {path!r}: expected a .npy or .csv file")
    try:
        if ext == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            delimiter = "," if "," in text else None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "input contained no data": checked below
                arr = np.loadtxt(path, delimiter=delimiter, ndmin=1, dtype=float)
    except (OSError, ValueError, UnicodeDecodeError, EOFError) as e:
        raise UsageError(flag, f"cannot read {path!r}: {e}") from None
    if not isinstance(arr, np.ndarray):
        raise UsageError(flag, f"cannot read {path!r}: not a single array")
    if np.iscomplexobj(arr):
        if not complex_ok:
            raise UsageError(flag, f"{path!r} holds complex numbers; a real array is needed")
        return np.asarray(arr, dtype=np.complex128)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise UsageError(flag, f"{path!r} holds {arr.dtype} data, not numbers")
    return np.asarray(arr, dtype=np.float64)


def _looks_like_file(spec: str) -> bool:
    return os.path.splitext(spec)[1].lower() in _EXTS or os.sep in spec


def resolve_matrix(spec: str, *, complex_ok: bool = False) -> np.ndarray:
    """`--matrix`: an existing file, else a generator spec."""
    flag = "--matrix"
    if os.path.exists(spec) or _looks_like_file(spec):
        a = load_array(spec, flag, complex_ok=complex_ok)
    else:
        try:
            a = _matrices.generate(spec)
        except ValueError as e:
            if ":" in spec:
                raise UsageError(flag, str(e)) from None
            gens = ", ".join(_matrices.GENERATORS)
            raise UsageError(
                flag,
                f"{spec!r} is neither a file nor a generator spec name:n[:seed=s] "
                f"(generators: {gens})",
            ) from None
    if a.size == 0:
        raise UsageError(flag, f"is empty (shape {a.shape})")
    if a.ndim == 1 and a.size == 1:
        a = a.reshape(1, 1)
    if a.ndim != 2:
        raise UsageError(flag, f"must be a 2-D matrix, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise UsageError(flag, f"must be finite (it holds {_count_nonfinite(a)})")
    return a


def _count_nonfinite(v: np.ndarray) -> str:
    n_nan = int(np.sum(np.isnan(v)))
    n_inf = int(np.sum(np.isinf(v)))
    parts = [f"{n_nan} NaN"] if n_nan else []
    parts += [f"{n_inf} inf"] if n_inf else []
    return " and ".join(parts)


def resolve_vector(
    path: str, flag: str, n: int, what: str, *, complex_ok: bool = False
) -> np.ndarray:
    v = load_array(path, flag, complex_ok=complex_ok)
    if v.ndim == 2 and 1 in v.shape:
        v = v.reshape(-1)
    if v.ndim == 0:
        v = v.reshape(1)
    if v.ndim != 1:
        raise UsageError(flag, f"must be a vector, got shape {v.shape}")
    if v.shape[0] != n:
        raise UsageError(flag, f"has length {v.shape[0]}, but {what} needs length {n}")
    if not np.all(np.isfinite(v)):
        raise UsageError(flag, f"must be finite (it holds {_count_nonfinite(v)})")
    return v


def check_invertible(a: np.ndarray) -> None:
    """INV needs a non-singular square matrix (numerical rank by SVD)."""
    n = a.shape[0]
    r = int(np.linalg.matrix_rank(a))
    if r < n:
        raise UsageError("--matrix", f"the matrix is singular (rank {r} < {n})")


def _check_plot_target(path: str) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(
            "--plot", "needs matplotlib: pip install 'amcdyn[plot]'"
        ) from None
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError("--plot", f"folder {folder!r} does not exist")
    if os.path.isdir(path):
        raise UsageError("--plot", f"{path!r} is a directory")


def _library_error(circuit: str, e: ValueError) -> UsageError:
    """Map the library's ``ValueError("`name` ...")`` to the CLI flag that set `name`."""
    msg = str(e)
    m = re.match(r"\s*`(\w+)`\s*(.*)", msg, flags=re.DOTALL)
    if m and m.group(1) in _FLAGS[circuit]:
        return UsageError(_FLAGS[circuit][m.group(1)], m.group(2))
    m = re.search(r"`(\w+)`", msg)
    if m and m.group(1) in _FLAGS[circuit]:
        return UsageError(_FLAGS[circuit][m.group(1)], msg)
    return UsageError(None, msg)


# ---------------------------------------------------------------------------------------
# the circuit registry: one entry per `amcdyn simulate|mc CIRCUIT`
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Problem:
    """A circuit's inputs as read from the command line.

    `a`: the real matrix that is mapped to conductances (its largest entry sets the default
    G0 under a conductance window); `info`: the report's identification fields; `data`: what
    the circuit's `make` needs.
    """

    a: np.ndarray
    info: dict[str, Any]
    data: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class CircuitSpec:
    """One `amcdyn simulate|mc CIRCUIT` entry; `simulate` and `mc` share all of it.

    - `add_arguments(parser, mc)`: the circuit's flags (the shared ones through `_common`).
    - `load(args) -> Problem`: read and check the inputs (`UsageError` naming the flag).
    - `make(args, problem, g0, amp_kwargs) -> (circuit, parameters)`: the nominal circuit
      (`amp_kwargs`: `r_w`, `f_p2`, `v_os` from the non-ideality flags the circuit supports)
      and its entries of the report's `parameters`; a library `ValueError` is mapped to a
      flag through `flags`. The Monte Carlo perturbation is `amcdyn.perturb_circuit` on the
      circuit's `g_pos`/`g_neg` (and offsets where `offset_v` is supported).
    - `extra(args, problem, sol) -> dict`: circuit-specific report fields of `simulate`
      (e.g. the complex solution, BER/SER).
    - `headline(report) -> (head, target)`: the first line of the readable summary and what
      the outputs settle to.
    - `nonideal`: the supported ones of `wire_r`, `offset_v`, `f_p2` (others: exit status 2).
    - `simulate(args, circuit) -> solution`: a circuit-specific simulator (default
      `amcdyn.simulate`, or `amcdyn.simulate_analytic` with `--method analytic`); the
      solution needs `summary()`, `result` and the waveform fields of `amcdyn.Solution`.
    - `solve(args, problem, g0, programming, key) -> solution`: a solver made of several
      transients (BlockAMC, HP-INV) instead of `make` + `simulate`; its `summary()` gives the
      report (no waveform figure). `ok_statuses`: the statuses that exit with 0.
    - `nonlinear`: the `mc` nominal run uses the ODE path (not the linearized analytic one).
    - `mc`: whether `amcdyn mc` supports the circuit (the batched `monte_carlo_circuit`
      paths need a linear circuit); otherwise it exits with status 2.
    - `mc_sample(args, problem, g0, programming, key) -> dict`: for a solver-style entry, one
      Monte Carlo sample's fields (`settling_time`, `rel_error`, `bits`, `result`, `energy`,
      `max_abs_output`), traceable so that `amcdyn.monte_carlo` batches it.
    - `mc_run(args, info, params, nonideal, problem) -> (report, result)`: for an entry whose
      samples cannot be batched (HP-INV's refinement loop), the whole `amcdyn mc` run.

    An entry without `load` is listed as "not implemented yet" (exit status 2 when run).
    """

    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser, bool], None] | None = None
    load: Callable[[argparse.Namespace], Problem] | None = None
    make: Callable[..., tuple[Any, dict]] | None = None
    flags: dict[str, str] = dataclasses.field(default_factory=dict)
    nonideal: frozenset[str] = frozenset({"wire_r", "offset_v", "f_p2"})
    nonideal_note: str = ""
    extra: Callable[[argparse.Namespace, Problem, Any], dict] | None = None
    headline: Callable[[dict], tuple[str, str]] | None = None
    hints: dict[str, str] = dataclasses.field(default_factory=dict)  # over `_HINTS`
    simulate: Callable[[argparse.Namespace, Any], Any] | None = None
    mc: bool = True
    solve: Callable[..., Any] | None = None
    ok_statuses: tuple[str, ...] = ("settled",)
    nonlinear: bool = False
    mc_sample: Callable[..., dict] | None = None
    mc_run: Callable[..., tuple[dict, Any]] | None = None
    limits: frozenset[str] = frozenset()  # of v_sat, slew_rate, c_node
    # The circuit maps its arrays itself with G0 = gmax/max|A| (gmax: --gmax, default 35 uS)
    # and refuses --g0; the report's `g0_s` is then that G0.
    g0_from_gmax: bool = False

    @property
    def implemented(self) -> bool:
        return self.load is not None


# Library argument names shared by every circuit (backticks in its ValueErrors) -> CLI flags.
_RUN_FLAGS = {
    "g0": "--g0",
    "a0": "--a0",
    "f_gbw": "--gbw",
    "tol": "--tol",
    "t_max": "--t-max",
    "max_steps": "--max-steps",
    "n_samples": "--samples",
    "chunk_size": "--chunk-size",
    "out": "--out",
}
_GINV_FLAGS = {
    **_RUN_FLAGS,
    "a": "--matrix",
    "b": "--rhs",
    "mode": "--side",
    "g_f": "--gf",
    "lam": "--lam",
    "inverters": "--inverters",
    "inverter_a0": "--a0",
    "inverter_f_gbw": "--gbw",
}
_ZF_FLAGS = {**_GINV_FLAGS, "h": "--matrix", "y": "--rhs", "s": "--rhs"}
_DFT_FLAGS = {
    **_RUN_FLAGS,
    "x": "--input",
    "n": "--size",
    "norm": "--norm",
    "g_f": "--gf",
    "r_w": "--wire-r",
    "f_p2": "--f-p2",
    "v_os": "--offset-v",
    "offset_sigma": "--offset-v",
}
_EGV_FLAGS = {**_RUN_FLAGS, "a": "--matrix", "lam": "--lam", "inverters": "--inverters",
              "inverter_a0": "--a0", "inverter_f_gbw": "--gbw"}
_CS_FLAGS = {**_RUN_FLAGS, "a": "--matrix", "b": "--rhs", "lam": "--lam"}
_SOLVER_FLAGS = {
    **_RUN_FLAGS, "a": "--matrix", "b": "--rhs", "stages": "--stages", "bits": "--bits",
    "iterations": "--iterations", "target_bits": "--target-bits", "g_max": "--gmax",
    "g_min": "--gmin", "r_w": "--wire-r", "f_p2": "--f-p2", "v_os": "--offset-v",
    "inverters": "--inverters", "method": "--method",
}
_MACRO_FLAGS = {**_RUN_FLAGS, "function": "--function", "matrix": "--matrix", "rhs": "--rhs",
                "lam": "--lam", "tiles": "--tiles", "a": "--matrix", "b": "--rhs"}
_GINV_NONIDEAL_NOTE = "input offsets are not modelled in the GINV/Ridge loop"
# GINV and Ridge (and the ZF circuits built on GINV) model wire resistance and second poles.
_GINV_NONIDEAL_FLAGS = {"r_w": "--wire-r", "r_w_col": "--wire-r", "f_p2": "--f-p2",
                        "inverter_f_p2": "--f-p2"}


def _shape_text(r: dict) -> str:
    if "m" in r and "n" in r:
        return f"{r['m']}x{r['n']}"
    return f"n={r['n']}" if "n" in r else ""


def _load_inv(args: argparse.Namespace) -> Problem:
    a = resolve_matrix(args.matrix)
    n, m = a.shape
    if n != m:
        raise UsageError("--matrix", f"must be square for INV, got shape {a.shape}")
    check_invertible(a)
    if args.g_in is not None and args.input_mode != "voltage":
        raise UsageError("--g-in", "only applies with --input-mode voltage")
    info: dict[str, Any] = {"matrix": args.matrix}
    if args.rhs is None:
        b = _matrices.default_rhs(a)
        info["rhs"] = "default: uniform(-1,1), seed 0, scaled to max|A^-1 b| = 1"
    else:
        b = resolve_vector(args.rhs, "--rhs", n, f"the {n} x {n} --matrix")
        info["rhs"] = args.rhs
    info["n"] = n
    return Problem(a, info, {"b": b})


def _make_inv(args, prob, g0, amp_kwargs):
    import amcdyn

    kwargs = dict(g0=g0, a0=args.a0, f_gbw=args.gbw, inverters=args.inverters,
                  input_mode=args.input_mode, **amp_kwargs)
    if args.g_in is not None:
        kwargs["g_in"] = args.g_in
    circuit = amcdyn.INV.from_matrix(prob.a, prob.data["b"], **kwargs)
    params = {
        "inverters": circuit.inverters,  # "none" when A has no negative entry
        "input_mode": args.input_mode,
        "g_in_s": (args.g_in or g0) if args.input_mode == "voltage" else None,
    }
    return circuit, params


def _load_mvm(args: argparse.Namespace) -> Problem:
    a = resolve_matrix(args.matrix)
    m, n = a.shape
    info: dict[str, Any] = {"matrix": args.matrix}
    if args.input is None:
        x = _matrices.default_vector(n)
        info["input"] = "default: uniform(-1,1), seed 0"
    else:
        x = resolve_vector(args.input, "--input", n, f"the {m} x {n} --matrix")
        info["input"] = args.input
    info["m"], info["n"] = m, n
    return Problem(a, info, {"x": x})


def _make_mvm(args, prob, g0, amp_kwargs):
    import amcdyn

    circuit = amcdyn.MVM.from_matrix(prob.a, prob.data["x"], g0=g0, a0=args.a0,
                                     f_gbw=args.gbw, g_f=args.g_f, **amp_kwargs)
    return circuit, {"g_f_s": args.g_f if args.g_f is not None else g0}


def _headline_inv(r):
    p = r["parameters"]
    return (f"amcdyn INV n={r['n']}  matrix={r['matrix']}  inverters={p['inverters']}  "
            f"input={p['input_mode']}  method={p['method']}"), "-A^-1 b"


def _headline_mvm(r):
    p = r["parameters"]
    return (f"amcdyn MVM {r['m']}x{r['n']}  matrix={r['matrix']}  "
            f"G_f={_si(p['g_f_s'], 'S')}  method={p['method']}"), "-(G0/G_f) A x"


def _load_ginv(args: argparse.Namespace) -> Problem:
    if args.matrix is None:
        raise UsageError(
            "--matrix", f"is required for {args.circuit} (a .npy/.csv file or generator spec)"
        )
    if getattr(args, "lam", 0.0) is None:
        raise UsageError("--lam", f"is required for {args.circuit} (lambda >= 0)")
    a = resolve_matrix(args.matrix)
    p, q = a.shape
    if args.side == "left" and p < q:
        raise UsageError("--matrix", f"must be tall (rows >= columns) for --side left, got "
                                     f"shape {a.shape}; use --side right for a wide matrix")
    if args.side == "right" and p > q:
        raise UsageError("--matrix", f"must be wide (rows <= columns) for --side right, got "
                                     f"shape {a.shape}; use --side left for a tall matrix")
    info: dict[str, Any] = {"matrix": args.matrix}
    if args.rhs is None:
        y = _matrices.default_vector(p)
        info["rhs"] = "default: uniform(-1,1), seed 0"
    else:
        y = resolve_vector(args.rhs, "--rhs", p, f"the {p} x {q} --matrix")
        info["rhs"] = args.rhs
    info["m"], info["n"] = p, q
    info["side"] = args.side
    return Problem(a, info, {"y": y})


def _loop_params(circuit, args) -> dict:
    g_f = np.asarray(circuit.g_f)
    return {
        "side": circuit.mode,
        "g_f_s": float(g_f) if g_f.ndim == 0 else [float(v) for v in g_f],
        "g_f_note": "given (--gf)" if args.g_f is not None
        else "default: critical damping of the slowest singular pair",
        "inverters": circuit.inverters if circuit.signed else "none",
    }


def _make_ginv(args, prob, g0, amp_kwargs):
    import amcdyn

    kwargs = dict(mode=args.side, g0=g0, g_f=args.g_f, a0=args.a0, f_gbw=args.gbw,
                  inverters=args.inverters, **amp_kwargs)  # r_w, f_p2 (CircuitSpec.nonideal)
    if args.circuit == "ridge":
        circuit = amcdyn.Ridge.from_matrix(prob.a, prob.data["y"], args.lam, **kwargs)
        params = _loop_params(circuit, args)
        params["lam"] = args.lam
        params["g_lambda_s"] = float(np.max(np.asarray(circuit.g_lambda)))
        return circuit, params
    circuit = amcdyn.GINV.from_matrix(prob.a, prob.data["y"], **kwargs)
    return circuit, _loop_params(circuit, args)


def _headline_ginv(r):
    p = r["parameters"]
    name = r["circuit"].upper()
    lam = f"  lambda={p['lam']:g}" if "lam" in p else ""
    if r["circuit"] == "ridge":
        target = ("-(X^T X + lambda I)^-1 X^T y" if p["side"] == "left"
                  else "-X^T (X X^T + lambda I)^-1 y")
    else:
        target = ("-X^+ y (least squares)" if p["side"] == "left"
                  else "-X^+ y (minimum norm)")
    g_f = p["g_f_s"] if isinstance(p["g_f_s"], float) else max(p["g_f_s"])
    return (f"amcdyn {name} {r['m']}x{r['n']}  matrix={r['matrix']}  side={p['side']}{lam}  "
            f"G_f={_si(g_f, 'S')}  inverters={p['inverters']}  method={p['method']}"), target


def _complex_list(z) -> dict[str, list[float]]:
    z = np.asarray(z)
    return {"re": [float(v) for v in z.real], "im": [float(v) for v in z.imag]}


def _load_zf(args: argparse.Namespace) -> Problem:
    import jax.random as jr

    from . import _mimo

    precode = args.circuit == "zf-precode"
    key_h, key_x, key_n = jr.split(jr.key(args.channel_seed), 3)
    info: dict[str, Any] = {}
    if args.matrix is None:
        if args.rhs is not None:
            raise UsageError("--rhs", "needs --matrix (the channel it belongs to)")
        k = 4 if args.users is None else args.users
        m = 16 if args.antennas is None else args.antennas
        if m < k:
            raise UsageError(
                "--antennas", f"must be >= --users for ZF, got {m} antennas for {k} users"
            )
        shape = (k, m) if precode else (m, k)
        h = np.asarray(_mimo.rayleigh_channel(key_h, *shape))
        info["matrix"] = f"rayleigh:{shape[0]}x{shape[1]}:channel-seed={args.channel_seed}"
    else:
        for flag, value in (("--users", args.users), ("--antennas", args.antennas)):
            if value is not None:
                raise UsageError(flag, "cannot be combined with --matrix (the channel's shape "
                                       "sets it)")
        h = resolve_matrix(args.matrix, complex_ok=True).astype(np.complex128)
        info["matrix"] = args.matrix
        k, m = h.shape if precode else h.shape[::-1]
        if m < k:
            want = "wide (users <= antennas)" if precode else "tall (antennas >= users)"
            raise UsageError("--matrix", f"must be {want} for {args.circuit}, got shape "
                                         f"{h.shape}")
    idx = None
    n0 = float(_mimo.noise_variance(args.snr_db))
    if args.rhs is None:
        x, idx = _mimo.qam_symbols(key_x, k, args.qam)
        x, idx = np.asarray(x), np.asarray(idx)
        info["rhs"] = f"default: random {args.qam}-QAM symbols" + (
            "" if precode else f" through H plus noise at {args.snr_db:g} dB"
        )
        if precode:
            v = x
        else:
            v = np.asarray(_mimo.awgn(key_n, h @ x, args.snr_db)[0])
    else:
        n_v = k if precode else m
        what = f"the {h.shape[0]} x {h.shape[1]} channel (--matrix)"
        v = resolve_vector(args.rhs, "--rhs", n_v, what, complex_ok=True).astype(np.complex128)
        info["rhs"] = args.rhs
    info["m"], info["n"] = h.shape
    info["users"], info["antennas"] = k, m
    info["mimo"] = {
        "qam": args.qam,
        "snr_db": args.snr_db,
        "noise_var": n0,
        "channel_seed": args.channel_seed,
        "symbols_known": idx is not None,
    }
    a = np.asarray(_mimo.real_equivalent_matrix(h))
    return Problem(a, info, {"h": h, "v": v, "idx": idx, "key_n": key_n})


def _make_zf(args, prob, g0, amp_kwargs):
    from . import _mimo

    build = _mimo.zf_precoder if args.circuit == "zf-precode" else _mimo.zf_detector
    circuit = build(prob.data["h"], prob.data["v"], g0=g0, g_f=args.g_f, a0=args.a0,
                    f_gbw=args.gbw, inverters=args.inverters, **amp_kwargs)  # r_w, f_p2
    return circuit, _loop_params(circuit, args)


def _rates(idx_hat, idx, order, prefix: str) -> dict[str, float]:
    from . import _mimo

    ser, ber = _mimo.error_rates(idx_hat, idx, order)
    return {f"ser{prefix}": float(ser), f"ber{prefix}": float(ber)}


def _extra_zf(args, prob, sol) -> dict:
    """The complex answer, and symbol/bit error rates against the sent symbols (when
    generated) and against the decisions of digital ZF."""
    import jax.numpy as jnp

    from . import _mimo

    h, v, idx, order = prob.data["h"], prob.data["v"], prob.data["idx"], args.qam
    z = np.asarray(_mimo.complex_from_real(jnp.asarray(sol.solution)))
    out: dict[str, Any] = {"solution_complex": _complex_list(z)}
    if args.circuit == "zf-detect":
        digital = np.asarray(_mimo.zf_detect(h, v))
        est, est_d = z, digital  # the symbol estimates
    else:
        digital = np.asarray(_mimo.zf_precode(h, v))
        # What the users receive: H x + noise (the same noise for both precoders).
        noise = np.asarray(_mimo.awgn(prob.data["key_n"], np.zeros(h.shape[0]), args.snr_db)[0])
        est, est_d = h @ z + noise, h @ digital + noise
    out["digital_zf"] = _complex_list(digital)
    dec, dec_d = _mimo.qam_detect(est, order), _mimo.qam_detect(est_d, order)
    out["n_symbols"] = int(np.size(dec))
    if idx is not None:
        out.update(_rates(dec, idx, order, ""))
        out.update(_rates(dec_d, idx, order, "_digital_zf"))
    out.update(_rates(dec, dec_d, order, "_vs_digital_zf"))
    return out


def _headline_zf(r):
    p = r["parameters"]
    mim = r["mimo"]
    what = "precoding" if r["circuit"] == "zf-precode" else "detection"
    target = "-(real-equivalent) H^+ s" if r["circuit"] == "zf-precode" else "-(real-eq.) H^+ y"
    return (f"amcdyn ZF {what}: {r['users']} users x {r['antennas']} antennas  "
            f"matrix={r['matrix']}  {mim['qam']}-QAM  SNR={mim['snr_db']:g} dB  "
            f"inverters={p['inverters']}  method={p['method']}"), target


def _load_dft(args: argparse.Namespace) -> Problem:
    from . import _mimo

    n = args.size
    info: dict[str, Any] = {"matrix": f"{'idft' if args.inverse else 'dft'}:{n}:{args.norm}"}
    if args.input is None:
        v = _matrices.default_vector(2 * n)
        x = v[:n] + 1j * v[n:]
        info["input"] = "default: uniform(-1,1) real and imaginary parts, seed 0"
    else:
        x = resolve_vector(args.input, "--input", n, f"--size {n}", complex_ok=True)
        info["input"] = args.input
    info["n"] = n
    f = _mimo.dft_matrix(n, inverse=args.inverse, norm=args.norm)
    a = np.asarray(_mimo.real_equivalent_matrix(f))
    return Problem(a, info, {"x": np.asarray(x, dtype=np.complex128)})


def _make_dft(args, prob, g0, amp_kwargs):
    from . import _mimo

    circuit = _mimo.dft_mvm(prob.data["x"], inverse=args.inverse, norm=args.norm, g0=g0,
                            a0=args.a0, f_gbw=args.gbw, g_f=args.g_f, **amp_kwargs)
    return circuit, {"g_f_s": args.g_f if args.g_f is not None else g0,
                     "inverse": args.inverse, "norm": args.norm}


def _extra_complex(args, prob, sol) -> dict:
    import jax.numpy as jnp

    from . import _mimo

    z = _mimo.complex_from_real(jnp.asarray(sol.solution))
    exact = _mimo.complex_from_real(jnp.asarray(sol.exact))
    return {"solution_complex": _complex_list(z), "exact_complex": _complex_list(exact)}


def _headline_dft(r):
    p = r["parameters"]
    name = "IDFT" if p["inverse"] else "DFT"
    return (f"amcdyn {name} N={r['n']} (real-equivalent {2 * r['n']}x{2 * r['n']} MVM)  "
            f"norm={p['norm']}  G_f={_si(p['g_f_s'], 'S')}  method={p['method']}"), \
        f"-(G0/G_f) [{name} x] (real-equivalent)"


def _args_egv(p: argparse.ArgumentParser, mc: bool) -> None:
    _common(
        p, mc=mc, matrix_default=None,
        matrix_help="the real square matrix A (required): .npy/.csv file or generator spec "
        "(e.g. random-nonneg:8); its dominant eigenvalue must be real, simple and positive",
    )
    p.add_argument(
        "--lam", type=_float_type(), default=None, metavar="LAMBDA",
        help="the set eigenvalue lambda < lambda_1 (G_lambda = lambda G0; default lambda_1 - "
        "5 %% of the gap to the second eigenvalue)",
    )
    p.add_argument(
        "--inverters", choices=("opamp", "ideal"), default="opamp",
        help="inverters for the negative part of A (default opamp)",
    )


def _load_egv(args: argparse.Namespace) -> Problem:
    if args.matrix is None:
        raise UsageError("--matrix", "is required for egv (a .npy/.csv file or generator spec)")
    if args.method != "ode":
        raise UsageError("--method", "egv grows into the rails (nonlinear): only --method ode")
    a = resolve_matrix(args.matrix)
    if a.shape[0] != a.shape[1]:
        raise UsageError("--matrix", f"must be square for EGV, got shape {a.shape}")
    return Problem(a, {"matrix": args.matrix, "n": a.shape[0]})


def _make_egv(args, prob, g0, amp_kwargs):
    from ._egv import EGV

    circuit = EGV.from_matrix(prob.a, lam=args.lam, g0=g0, a0=args.a0, f_gbw=args.gbw,
                              inverters=args.inverters)
    return circuit, {"lam": float(np.asarray(circuit.lam)), "inverters": args.inverters}


def _simulate_egv(args, circuit):
    from ._egv import simulate_egv

    return simulate_egv(circuit, tol=args.tol, t_max=args.t_max, max_steps=args.max_steps,
                        throw=False)


def _headline_egv(r):
    p = r["parameters"]
    return (f"amcdyn EGV n={r['n']}  matrix={r['matrix']}  lambda={p['lam']:.4g}  "
            f"inverters={p['inverters']}  method=ode"), "+-v_sat along the dominant eigenvector"


def _args_cs(p: argparse.ArgumentParser, mc: bool) -> None:
    _common(
        p, mc=mc, matrix_default=None,
        matrix_help="the sensing matrix Phi (m x n, required): .npy/.csv file or generator spec",
    )
    p.add_argument(
        "--rhs", metavar="FILE", default=None,
        help="measurements y, one per row of Phi (.npy/.csv); default Phi a0 for a 2-sparse "
        "a0 (entries +-1 at columns 0 and n/2)",
    )
    p.add_argument(
        "--lam", type=_float_type(), default=None, metavar="LAMBDA",
        help="LASSO weight lambda > 0 (V, the dead zone's half-width; required)",
    )


def _load_cs(args: argparse.Namespace) -> Problem:
    if args.matrix is None:
        raise UsageError("--matrix", "is required for cs (a .npy/.csv file or generator spec)")
    if args.lam is None:
        raise UsageError("--lam", "is required for cs (lambda > 0)")
    if args.method != "ode":
        raise UsageError("--method", "cs has a dead zone (nonlinear): only --method ode")
    a = resolve_matrix(args.matrix)
    m, n = a.shape
    info: dict[str, Any] = {"matrix": args.matrix}
    if args.rhs is None:
        x0 = np.zeros(n)
        x0[0], x0[n // 2] = 1.0, -1.0
        y = a @ x0
        info["rhs"] = "default: Phi a0, a0 = +-1 at columns 0 and n/2"
    else:
        y = resolve_vector(args.rhs, "--rhs", m, f"the {m} x {n} --matrix")
        info["rhs"] = args.rhs
    info["m"], info["n"] = m, n
    return Problem(a, info, {"y": y})


def _make_cs(args, prob, g0, amp_kwargs):
    from ._cs import LASSO

    circuit = LASSO.from_matrix(prob.a, prob.data["y"], args.lam, g0=g0, a0=args.a0,
                                f_gbw=args.gbw)
    return circuit, {"lam": args.lam, "width": float(np.asarray(circuit.width))}


def _headline_cs(r):
    p = r["parameters"]
    return (f"amcdyn CS (LASSO) {r['m']}x{r['n']}  matrix={r['matrix']}  lambda={p['lam']:g}  "
            f"method=ode"), "-u with a = T_lambda(u) the LASSO minimizer"


def _args_square_solver(p: argparse.ArgumentParser, mc: bool, what: str) -> None:
    _common(
        p, mc=mc, matrix_default=None,
        matrix_help="the square matrix A (required): .npy/.csv file or generator spec (e.g. "
        "wishart:16)",
    )
    p.add_argument(
        "--rhs", metavar="FILE", default=None,
        help="right-hand side b (.npy/.csv); default uniform(-1,1), seed 0, scaled so "
        "max|A^-1 b| = 1",
    )
    # A sequence of transients: the eigendecomposition path is the practical default.
    _method_choices(p, ("analytic", "expm", "ode"), "analytic")


def _method_choices(p: argparse.ArgumentParser, choices: tuple[str, ...], default: str) -> None:
    """Narrow or widen `--method` for a circuit whose simulator offers other paths."""
    for action in p._actions:
        if action.dest == "method":
            action.choices, action.default = choices, default
            action.help = f"transient path of every step: {', '.join(choices)} (default {default})"
    p.set_defaults(method=default)


def _args_macro(p: argparse.ArgumentParser, mc: bool) -> None:
    _common(
        p, mc=mc, matrix_default=None,
        matrix_help="the task's matrix A (required): square for inv/egv, (m, n) for mvm, tall "
        "for ginv; .npy/.csv file or generator spec",
    )
    _method_choices(p, ("expm", "ode"), "expm")
    p.add_argument(
        "--function", choices=("mvm", "inv", "egv", "ginv"), default=None,
        help="the connection configuration (the task) the macro runs (required)",
    )
    p.add_argument(
        "--rhs", metavar="FILE", default=None,
        help="the task's input: x for mvm, b for inv/ginv (.npy/.csv); default uniform(-1,1), "
        "seed 0; unused for egv",
    )
    p.add_argument(
        "--lam", type=_float_type(), default=None, metavar="LAMBDA",
        help="egv: the set eigenvalue (default from the spectrum)",
    )
    p.add_argument(
        "--tiles", type=_int_type, default=2, metavar="T",
        help="crossbar tiles of the macro (default 2; ginv needs 2); tiles are sized to A",
    )


def _load_macro(args: argparse.Namespace) -> Problem:
    if args.function is None:
        raise UsageError("--function", "is required for macro (mvm, inv, egv or ginv)")
    if args.matrix is None:
        raise UsageError("--matrix", "is required for macro (a .npy/.csv file or generator spec)")
    if args.plot is not None:
        raise UsageError("--plot", "no waveform figure for macro; use --json")
    if args.g0 is not None:
        raise UsageError("--g0", "the macro maps every task with G0 = gmax/max|A|")
    if args.sigma:
        raise UsageError("--sigma", "the macro's devices are written by write-verify (with its "
                                    "own write noise); --sigma does not apply")
    a = resolve_matrix(args.matrix)
    m, n = a.shape
    f = args.function
    if f in ("inv", "egv") and m != n:
        raise UsageError("--matrix", f"must be square for --function {f}, got shape {a.shape}")
    if f == "ginv" and m < n:
        raise UsageError("--matrix", f"must be tall for --function ginv, got shape {a.shape}")
    info: dict[str, Any] = {"matrix": args.matrix, "function": f}
    b = None
    if f != "egv":
        k = n if f == "mvm" else m
        if args.rhs is None:
            b = _matrices.default_vector(k)
            info["rhs"] = "default: uniform(-1,1), seed 0"
        else:
            b = resolve_vector(args.rhs, "--rhs", k, f"--function {f} on the {m} x {n} --matrix")
            info["rhs"] = args.rhs
    info["m"], info["n"] = m, n
    return Problem(a, info, {"b": b})


class _MacroRun:
    """A `MacroResult` with the `summary()` of the CLI reports."""

    def __init__(self, res):
        self.res = res

    def summary(self) -> dict:
        f = lambda x: float(np.asarray(x))
        res, prog = self.res, self.res.program
        out = res.solution.summary()
        out.update(
            solve_time_s=out["settling_time_s"],
            solve_energy_j=out["energy_j"],
            program_time_s=f(prog.time),
            program_energy_j=f(prog.energy),
            program_pulses=int(np.sum(np.asarray(prog.pulses))),
            program_converged=f(prog.converged),
            total_time_s=f(res.time),
            total_energy_j=f(res.energy),
        )
        return out


def _solve_macro(args, prob, g0, programming, key):
    from ._macro import Macro

    m, n = prob.a.shape
    window = prob.data["_window"] or {}
    levels = window.get("levels") or 16
    macro = Macro.create(
        rows=max(m, n), cols=max(m, n), tiles=args.tiles, g_min=window.get("g_min", 0.5e-6),
        g_max=window.get("g_max", 35e-6), levels=levels, a0=args.a0, f_gbw=args.gbw,
    )
    opts: dict[str, Any] = {"tol": args.tol, "t_max": args.t_max, "throw": False}
    if args.method == "ode":
        opts["max_steps"] = args.max_steps
    if args.function == "egv" and args.lam is not None:
        opts["lam"] = args.lam
    res = macro.run(args.function, prob.a, prob.data["b"], key=key, method=args.method, **opts)
    return _MacroRun(res)


def _mc_sample_blockamc(args, prob, g0, programming, key) -> dict:
    # In `mc`, --offset-v is the sigma of a random offset per amplifier and sample.
    sol = _solve_blockamc(args, prob, g0, programming, key, offset_sigma=args.offset_v or None)
    return {
        "settling_time": sol.settling_time,
        "rel_error": sol.rel_error,
        "bits": sol.bits,
        "result": sol.result,
        "energy": sol.energy,
        "max_abs_output": sol.max_abs_voltage,
    }


def _mc_sample_macro(args, prob, g0, programming, key) -> dict:
    import jax.numpy as jnp

    res = _solve_macro(args, prob, g0, programming, key).res
    sol = res.solution
    return {
        "settling_time": sol.settling_time,
        "rel_error": sol.rel_error,
        "bits": sol.bits,
        "result": sol.result,
        "energy": res.energy,
        "max_abs_output": jnp.max(jnp.abs(sol.v_final)),
    }


def _args_blockamc(p: argparse.ArgumentParser, mc: bool) -> None:
    _args_square_solver(p, mc, "blockamc")
    p.add_argument(
        "--stages", type=int, choices=(1, 2), default=1,
        help="1: one 2x2 block partition; 2: the blocks A11 and S partitioned again (default 1)",
    )
    p.add_argument(
        "--inverters", choices=("opamp", "ideal"), default="opamp",
        help="inverters of the INV steps for negative entries (default opamp)",
    )


def _args_hpinv(p: argparse.ArgumentParser, mc: bool) -> None:
    _args_square_solver(p, mc, "hpinv")
    p.add_argument(
        "--bits", type=_int_type, default=3, metavar="B",
        help="bits per cell of the low-precision analog INV (2^B levels in [gmin, gmax]; "
        "default 3)",
    )
    p.add_argument(
        "--iterations", type=_int_type, default=20, metavar="K",
        help="the most refinement cycles (default 20)",
    )
    p.add_argument(
        "--target-bits", type=_float_type(), default=24.0, metavar="B", dest="target_bits",
        help="stop at ||r||_inf <= 2^-B ||b||_inf (default 24)",
    )
    p.add_argument(
        "--block", action="store_true",
        help="solve on half-size arrays with a one-stage BlockAMC",
    )


def _load_square_solver(args: argparse.Namespace) -> Problem:
    if args.matrix is None:
        raise UsageError(
            "--matrix", f"is required for {args.circuit} (a .npy/.csv file or generator spec)"
        )
    if args.plot is not None:
        raise UsageError("--plot", f"no waveform figure for {args.circuit} (a sequence of "
                                   "transients); use --json for the per-step numbers")
    a = resolve_matrix(args.matrix)
    n, m = a.shape
    if n != m:
        raise UsageError("--matrix", f"must be square for {args.circuit}, got shape {a.shape}")
    check_invertible(a)
    info: dict[str, Any] = {"matrix": args.matrix}
    if args.rhs is None:
        b = _matrices.default_rhs(a)
        info["rhs"] = "default: uniform(-1,1), seed 0, scaled to max|A^-1 b| = 1"
    else:
        b = resolve_vector(args.rhs, "--rhs", n, f"the {n} x {n} --matrix")
        info["rhs"] = args.rhs
    info["n"] = n
    return Problem(a, info, {"b": b})


def _load_hpinv(args: argparse.Namespace) -> Problem:
    for flag, value in (("--levels", args.levels), ("--g0", args.g0)):
        if value is not None:
            raise UsageError(flag, "is set by hpinv itself (levels from --bits, G0 per array "
                                   "from --gmax)")
    return _load_square_solver(args)


def _solve_blockamc(args, prob, g0, programming, key, offset_sigma=None):
    from ._blockamc import blockamc_solve

    window = prob.data["_window"]
    kwargs = dict(prob.data["_amp_kwargs"], a0=args.a0, f_gbw=args.gbw,
                  inverters=args.inverters)
    if window is None:
        kwargs["g0"] = g0
    return blockamc_solve(
        prob.a, prob.data["b"], stages=args.stages, method=args.method, tol=args.tol,
        g_max=None if window is None else window["g_max"], programming=programming, key=key,
        offset_sigma=offset_sigma, throw=False, **kwargs,
    )


def _hpinv_options(args, prob) -> dict:
    """`hpinv_solve`'s options from the flags (shared by `simulate` and `mc`)."""
    return dict(
        bits=args.bits, g_min=0.5e-6 if args.gmin is None else args.gmin,
        g_max=35e-6 if args.gmax is None else args.gmax,
        iterations=args.iterations, target_bits=args.target_bits, block=args.block,
        method=args.method, tol=args.tol, a0=args.a0, f_gbw=args.gbw,
        **prob.data["_amp_kwargs"],
    )


def _hpinv_variation(args):
    import amcdyn

    return amcdyn.Variation(args.sigma, kind=args.variation) if args.sigma > 0 else None


def _solve_hpinv(args, prob, g0, programming, key):
    from ._hpinv import hpinv_solve

    return hpinv_solve(
        prob.a, prob.data["b"], variation=_hpinv_variation(args), key=key,
        **_hpinv_options(args, prob),
    )


_GINV_HINTS = {
    "unstable": "with op-amp inverters the loop latches when G_f is too small: raise --gf (or "
    "omit it for the default), or use --inverters differential",
}
_GINV_LOOP = dict(
    flags=_GINV_FLAGS,
    nonideal=frozenset(),
    nonideal_note=_GINV_NONIDEAL_NOTE,
    hints=_GINV_HINTS,
)
# GINV and Ridge themselves model wire resistance and second poles (not offsets).
_GINV_RIDGE = dict(
    _GINV_LOOP,
    flags={**_GINV_FLAGS, **_GINV_NONIDEAL_FLAGS},
    nonideal=frozenset({"wire_r", "f_p2"}),
)

CIRCUITS: dict[str, CircuitSpec] = {
    spec.name: spec
    for spec in (
        CircuitSpec(
            "inv", "closed-loop matrix inversion: outputs settle to -A^-1 b",
            "INV: closed-loop solve of A x = b; the outputs settle to V = -A^-1 b.",
            _args_inv, _load_inv, _make_inv, flags=_FLAGS["inv"], headline=_headline_inv,
            limits=frozenset({"v_sat", "slew_rate", "c_node"}),
        ),
        CircuitSpec(
            "mvm", "open-loop matrix-vector multiply: outputs settle to -(G0/Gf) A x",
            "MVM: open-loop y = A x with column splitting; the outputs settle to "
            "V = -(G0/G_f) A x.",
            _args_mvm, _load_mvm, _make_mvm, flags=_FLAGS["mvm"], headline=_headline_mvm,
            limits=frozenset({"v_sat", "slew_rate"}),
        ),
        CircuitSpec(
            "ginv", "least squares / pseudoinverse: outputs settle to -X^+ y",
            "GINV: two crossbars X and X^T in one loop (TIAs + non-inverting second stage). "
            "--side left (X tall): least squares w = argmin ||Xw - y||; --side right (X wide): "
            "the minimum-norm solution of X w = y. `solution` is w.",
            _args_ginv, _load_ginv, _make_ginv, headline=_headline_ginv, **_GINV_RIDGE,
        ),
        CircuitSpec(
            "ridge", "ridge regression / MMSE: (X^T X + lambda I)^-1 X^T y",
            "Ridge: the GINV loop plus G_lambda = lambda G0^2/G_f per second-stage op-amp. "
            "--side left: w = (X^T X + lambda I)^-1 X^T y; --side right: "
            "w = X^T (X X^T + lambda I)^-1 y. `solution` is w.",
            lambda p, mc: _args_ginv(p, mc, ridge=True), _load_ginv, _make_ginv,
            headline=_headline_ginv, **_GINV_RIDGE,
        ),
        CircuitSpec(
            "egv", "dominant eigenvector (EGV): grows along v_1 into the rails",
            "EGV: TIAs with feedback G_lambda = lambda G0 and positive feedback through A; the "
            "outputs grow along the dominant eigenvector until the rails. `solution` is the "
            "unit read-out eigenvector (largest entry positive). Nonlinear: --method ode only "
            "(also for mc, which runs amcdyn.simulate_egv per sample).",
            _args_egv, _load_egv, _make_egv, flags=_EGV_FLAGS, nonideal=frozenset(),
            nonideal_note="the EGV model has ideal wires and single-pole op-amps",
            headline=_headline_egv, simulate=_simulate_egv, nonlinear=True,
        ),
        CircuitSpec(
            "zf-detect", "massive-MIMO uplink ZF detection (complex, real-equivalent GINV)",
            "Zero-forcing detection x = H^+ y of a complex channel H (antennas x users) as a "
            "left GINV on the real-equivalent [[Hr, -Hi], [Hi, Hr]]. `solution` is "
            "[Re x; Im x]; `solution_complex` the complex estimate; BER/SER against the sent "
            "symbols and against digital ZF.",
            lambda p, mc: _args_zf(p, mc, precode=False), _load_zf, _make_zf,
            flags={**_ZF_FLAGS, **_GINV_NONIDEAL_FLAGS}, nonideal=frozenset({"wire_r", "f_p2"}),
            nonideal_note=_GINV_NONIDEAL_NOTE, extra=_extra_zf, headline=_headline_zf,
            hints=_GINV_HINTS,
        ),
        CircuitSpec(
            "zf-precode", "massive-MIMO downlink ZF precoding (complex, real-equivalent GINV)",
            "Zero-forcing precoding x = H^+ s = H^H (H H^H)^-1 s of a complex channel H "
            "(users x antennas) as a right GINV on the real-equivalent channel. `solution` is "
            "[Re x; Im x]; BER/SER of the users' decisions on H x + noise against the sent "
            "symbols and against digital ZF.",
            lambda p, mc: _args_zf(p, mc, precode=True), _load_zf, _make_zf,
            flags={**_ZF_FLAGS, **_GINV_NONIDEAL_FLAGS}, nonideal=frozenset({"wire_r", "f_p2"}),
            nonideal_note=_GINV_NONIDEAL_NOTE, extra=_extra_zf, headline=_headline_zf,
            hints=_GINV_HINTS,
        ),
        CircuitSpec(
            "dft", "DFT/IDFT of a complex vector by one real-equivalent MVM (OFDM)",
            "DFT: the N-point (I)DFT as an MVM of the real-equivalent (2N x 2N) DFT matrix on "
            "[Re x; Im x] (column splitting for the signs). `solution` is [Re X; Im X], "
            "`solution_complex` equals numpy.fft.fft(x, norm=...) (ifft with --inverse).",
            _args_dft, _load_dft, _make_dft, flags=_DFT_FLAGS, extra=_extra_complex,
            headline=_headline_dft,
        ),
        CircuitSpec(
            "blockamc", "BlockAMC: 2x2-block INV/MVM sequence (--stages 1|2)",
            "BlockAMC: A x = b with A partitioned into 2x2 blocks, solved by the sequence "
            "INV(A11) -> MVM(A21) -> INV(S) -> MVM(A12) -> INV(A11), each step a transient of "
            "its own array with sample-and-hold (--stages 2: recursively). `solution` is x; "
            "the report lists every step. `mc`: every sample programs every array with its "
            "own draws (settling_time_s is the total time of the sequence).",
            _args_blockamc, _load_square_solver, flags=_SOLVER_FLAGS, solve=_solve_blockamc,
            mc_sample=lambda *a: _mc_sample_blockamc(*a),
        ),
        CircuitSpec(
            "macro", "reconfigurable macro: one crossbar, MVM/INV/EGV/GINV by configuration",
            "Reconfigurable macro: crossbar tiles plus one amplifier bank whose connection "
            "configuration (--function) selects MVM, INV, EGV or GINV; the task's matrix is "
            "written by write-verify from the fresh (gmin) state onto --levels levels (default "
            "16). The report adds the reprogramming pulses, time and energy and the totals. "
            "`mc`: every sample draws its own write-verify noise (energy_j includes the "
            "reprogramming).",
            _args_macro, _load_macro, flags=_MACRO_FLAGS, solve=_solve_macro, g0_from_gmax=True,
            mc_sample=lambda *a: _mc_sample_macro(*a),
            nonideal=frozenset(), nonideal_note="the macro's amplifier bank and tiles are "
            "modelled without wire resistance, second poles or offsets here",
        ),
        CircuitSpec(
            "hpinv", "HP-INV: iterative refinement with a low-precision analog INV",
            "HP-INV: A x = b to high precision: a low-precision analog INV (--bits per cell) "
            "inside a refinement loop with a high-precision MVM for the residual, at most "
            "--iterations cycles. `solution` is x in float64, `bits` the fixed-point bits "
            "achieved. `mc`: every sample programs the LP-INV arrays with its own draws and "
            "runs the whole refinement (samples in a host loop; statuses converged, "
            "not_converged, ...; the yield is the converged fraction).",
            _args_hpinv, _load_hpinv, flags=_SOLVER_FLAGS, solve=_solve_hpinv,
            mc_run=lambda *a: _run_mc_hpinv(*a), ok_statuses=("converged",), g0_from_gmax=True,
        ),
        CircuitSpec(
            "cs", "compressed-sensing recovery: one-step analog LASSO (LCA dynamics)",
            "Compressed sensing: min 1/2 ||y - Phi a||^2 + lambda ||a||_1 by a locally-"
            "competitive loop on two arrays Phi and Phi^T with a soft-threshold element. "
            "`solution` is the recovered a. Nonlinear: --method ode only (also for mc).",
            _args_cs, _load_cs, _make_cs, flags=_CS_FLAGS, nonideal=frozenset(),
            nonideal_note="the LASSO model has ideal wires and single-pole op-amps",
            headline=_headline_cs, nonlinear=True,
        ),
    )
}
_FLAGS.update({name: spec.flags for name, spec in CIRCUITS.items() if name not in _FLAGS})


def _not_implemented() -> list[str]:
    return [name for name, spec in CIRCUITS.items() if not spec.implemented]


def _check_nonideal_support(spec: CircuitSpec, args: argparse.Namespace) -> None:
    for dest, flag in (("wire_r", "--wire-r"), ("offset_v", "--offset-v"), ("f_p2", "--f-p2")):
        if dest not in spec.nonideal and getattr(args, dest, None):
            raise UsageError(flag, f"is not supported for {spec.name}: {spec.nonideal_note}")
    for dest, flag in (("v_sat", "--v-sat"), ("slew_rate", "--slew-rate"), ("c_node", "--c-node")):
        if dest not in spec.limits and getattr(args, dest, None) is not None:
            where = ", ".join(n for n, s in CIRCUITS.items() if dest in s.limits)
            raise UsageError(flag, f"is not supported for {spec.name} (only for: {where})")
    if (args.v_sat is not None or args.slew_rate is not None) and args.method != "ode":
        flag = "--v-sat" if args.v_sat is not None else "--slew-rate"
        raise UsageError(flag, "makes the circuit nonlinear: it needs --method ode")


# ---------------------------------------------------------------------------------------
# running and reporting
# ---------------------------------------------------------------------------------------


def _window(args: argparse.Namespace) -> dict | None:
    """The conductance window options, or None when no window flag is given."""
    if args.levels is None and args.gmin is None and args.gmax is None:
        if args.window_mode is not None:
            raise UsageError(
                "--window-mode", "needs a conductance window (--levels, --gmin or --gmax)"
            )
        return None
    g_min = 0.5e-6 if args.gmin is None else args.gmin
    g_max = 35e-6 if args.gmax is None else args.gmax
    if g_max <= g_min:
        flag = "--gmax" if args.gmax is not None else "--gmin"
        raise UsageError(flag, f"the window needs gmax > gmin, got gmin={g_min:g} S, "
                               f"gmax={g_max:g} S")
    return {"g_min": g_min, "g_max": g_max, "levels": args.levels,
            "mode": args.window_mode or "clip"}


def _programming(args: argparse.Namespace, window: dict | None):
    """window -> variation, as an `amcdyn.Programming`, or None when there is nothing to do."""
    import amcdyn

    stages = []
    if window is not None:
        stages.append(amcdyn.ConductanceWindow(**window))
    if args.sigma > 0:
        stages.append(amcdyn.Variation(args.sigma, kind=args.variation))
    return amcdyn.Programming(tuple(stages)) if stages else None


def _build(args: argparse.Namespace, *, mc: bool):
    """Read the inputs and build the nominal circuit (through its `CIRCUITS` entry).

    Returns `(circuit, info, params, nonideal, programming, problem)`: the report's
    identification, its nominal parameters, the non-ideality settings, the programming chain
    and the circuit's inputs.
    """
    spec = CIRCUITS[args.circuit]
    if not spec.implemented:
        done = ", ".join(n for n, s in CIRCUITS.items() if s.implemented)
        raise UsageError(
            None, f"circuit {args.circuit!r} is not implemented yet (available: {done})"
        )
    if mc and not spec.mc:
        raise UsageError(
            None, f"Monte Carlo of {args.circuit!r} is not available yet; use `amcdyn simulate "
            f"{args.circuit} --sigma S --seed K` for single random instances"
        )
    prob = spec.load(args)
    if args.plot is not None:
        _check_plot_target(args.plot)
    window = _window(args)
    _check_nonideal_support(spec, args)
    a = prob.a
    if args.g0 is not None:
        g0 = args.g0
    elif spec.g0_from_gmax and np.max(np.abs(a)) > 0:
        g0 = (35e-6 if args.gmax is None else args.gmax) / float(np.max(np.abs(a)))
    elif window is not None and np.max(np.abs(a)) > 0:
        g0 = window["g_max"] / float(np.max(np.abs(a)))  # largest |entry| -> g_max
    else:
        g0 = 1e-4
    params: dict[str, Any] = {
        "g0_s": g0,
        "a0": args.a0,
        "f_gbw_hz": args.gbw,
        "tol": args.tol,
        "method": args.method,
        "t_max_s": args.t_max,
    }
    wire_r = args.wire_r if args.wire_r else None  # 0: the ideal crossbar
    offset = args.offset_v if args.offset_v else None
    nonideal: dict[str, Any] = {
        "sigma": args.sigma,
        "variation": args.variation if args.sigma > 0 else None,
        "levels": None if window is None else window["levels"],
        "g_min_s": None if window is None else window["g_min"],
        "g_max_s": None if window is None else window["g_max"],
        "window_mode": None if window is None else window["mode"],
        "wire_r_ohm": wire_r,
        "offset_v": offset,
        "offset": None if offset is None else (
            "sigma of a random offset per amplifier and sample" if mc
            else "fixed offset on every amplifier"
        ),
        "f_p2_hz": args.f_p2,
        "seed": args.seed,
    }
    amp_kwargs: dict[str, Any] = {}
    if wire_r is not None:
        amp_kwargs["r_w"] = wire_r
    if args.f_p2 is not None:
        amp_kwargs["f_p2"] = args.f_p2
    if offset is not None and not mc:
        amp_kwargs["v_os"] = offset
    for name in ("v_sat", "slew_rate", "c_node"):
        value = getattr(args, name, None)
        nonideal[name] = value
        if value is not None:
            amp_kwargs[name] = value
    info: dict[str, Any] = {"circuit": args.circuit, **prob.info}
    prob.data["_amp_kwargs"], prob.data["_window"] = amp_kwargs, window
    circuit = None  # a solver-style entry (`spec.solve`) builds its own circuits
    if spec.make is not None:
        try:
            circuit, extra = spec.make(args, prob, g0, amp_kwargs)
        except ValueError as e:
            raise _library_error(args.circuit, e) from None
        params.update(extra)
    return circuit, info, params, nonideal, _programming(args, window), prob


def _window_error(e: ValueError) -> UsageError:
    msg = str(e).replace("`g` has ", "").replace(
        "conductances outside", "target conductances G0*|A+-| outside"
    )
    msg = msg.replace("; use mode='clip' to clip them", "")
    return UsageError(
        "--window-mode", f"error: {msg}; adjust --g0 or --gmin/--gmax, or use --window-mode clip"
    )


def _collect_warnings(caught) -> list[str]:
    """Unique warning messages, each also written to stderr."""
    msgs: list[str] = []
    for w in caught:
        text = str(w.message)
        if text not in msgs:
            msgs.append(text)
            print(f"amcdyn: warning: {text}", file=sys.stderr)
    return msgs


def _run(args: argparse.Namespace) -> tuple[dict, Any]:
    import jax

    import amcdyn

    from ._mc import perturb_circuit

    circuit, info, params, nonideal, programming, prob = _build(args, mc=False)
    spec = CIRCUITS[args.circuit]
    caught: list = []
    if spec.solve is not None:
        key = jax.random.fold_in(jax.random.key(args.seed), 0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                sol = spec.solve(args, prob, params["g0_s"], programming, key)
            except ValueError as e:
                if "window" in str(e) or "`g`" in str(e):
                    raise _window_error(e) from None
                raise _library_error(args.circuit, e) from None
        report = dict(info)
        report.update(sol.summary())
        report["parameters"] = params
        report["nonidealities"] = nonideal
        if caught:
            report["warnings"] = _collect_warnings(caught)
        return report, sol
    if programming is not None:
        # One random instance: sample 0 of `amcdyn mc` with the same seed.
        key = jax.random.fold_in(jax.random.key(args.seed), 0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                circuit = perturb_circuit(circuit, key, programming=programming)
            except ValueError as e:
                if "window" in str(e) or "`g`" in str(e):
                    raise _window_error(e) from None
                raise _library_error(args.circuit, e) from None

    try:
        if spec.simulate is not None:
            sol = spec.simulate(args, circuit)
        elif args.method == "analytic":
            sol = amcdyn.simulate_analytic(circuit, tol=args.tol, t_max=args.t_max, throw=False)
        else:
            sol = amcdyn.simulate(
                circuit, tol=args.tol, t_max=args.t_max, max_steps=args.max_steps, throw=False
            )
    except ValueError as e:
        raise _library_error(args.circuit, e) from None

    report = dict(info)
    report.update(sol.summary())
    report["settling_time_note"] = _NOTES.get(report["status"], report["status"])
    if report["status"] != "settled":
        report["status_message"] = amcdyn.RESULTS[sol.result]
    report["parameters"] = params
    report["nonidealities"] = nonideal
    if spec.extra is not None:
        report.update(spec.extra(args, prob, sol))
    if caught:
        report["warnings"] = _collect_warnings(caught)
    return report, sol


# ---------------------------------------------------------------------------------------
# Monte Carlo
# ---------------------------------------------------------------------------------------

_MC_FIELDS = (
    # (sample field, report key)
    ("settling_time", "settling_time_s"),
    ("rel_error", "rel_error"),
    ("bits", "bits"),
    ("energy", "energy_j"),
    ("max_abs_output", "max_abs_output_v"),
)
_MC_STATS = ("p5", "p50", "p95", "mean", "min", "max", "n_finite")


def _check_out_target(path: str) -> None:
    if not path.endswith(".npz"):
        raise UsageError("--out", f"must be a path ending in '.npz', got {path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError("--out", f"folder {folder!r} does not exist")
    if os.path.isdir(path):
        raise UsageError("--out", f"{path!r} is a directory")


def _run_mc(args: argparse.Namespace) -> tuple[dict, Any]:
    import jax

    import amcdyn

    from ._mc import T_MAX_FACTOR, monte_carlo_circuit

    circuit, info, params, nonideal, programming, prob = _build(args, mc=True)
    if args.out is not None:
        _check_out_target(args.out)
    spec = CIRCUITS[args.circuit]
    if spec.mc_sample is not None:
        return _run_mc_solver(args, spec, info, params, nonideal, programming, prob)
    if spec.mc_run is not None:
        return spec.mc_run(args, info, params, nonideal, prob)
    try:
        if spec.simulate is not None:  # the circuit's own simulator (EGV)
            nominal = spec.simulate(args, circuit)
        elif spec.nonlinear or circuit.nonlinear:  # the linearization is not the circuit
            nominal = amcdyn.simulate(circuit, tol=args.tol, max_steps=args.max_steps,
                                      throw=False)
        else:
            nominal = amcdyn.simulate_analytic(circuit, tol=args.tol, n_save=0, throw=False)
    except ValueError as e:
        raise _library_error(args.circuit, e) from None
    t_max = args.t_max if args.t_max is not None else T_MAX_FACTOR * float(nominal.t_max)
    if not (math.isfinite(t_max) and t_max > 0):
        raise UsageError("--t-max", "cannot derive a default from the nominal circuit; give one")
    min_bits = args.min_bits
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res = monte_carlo_circuit(
                circuit,
                jax.random.key(args.seed),
                args.samples,
                programming=programming,
                offset_sigma=nonideal["offset_v"],
                tol=args.tol,
                t_max=t_max,
                method=args.method,
                max_steps=args.max_steps,
                chunk_size=args.chunk_size,
                out=args.out,
                progress=args.progress,
            )
        except ValueError as e:
            msg = str(e)
            if msg.startswith("`out`"):
                raise UsageError("--out", msg.replace("`out`", "--out")) from None
            if "window" in msg or msg.startswith("`g`"):
                raise _window_error(e) from None
            raise _library_error(args.circuit, e) from None
    t_max_note = (
        "given (--t-max)" if args.t_max is not None
        else f"{T_MAX_FACTOR:g} x the nominal circuit's default t_max"
    )
    report = _mc_report(res, min_bits, info, params, nonideal, nominal, t_max, t_max_note)
    report["out"] = args.out
    if caught:
        report["warnings"] = _collect_warnings(caught)
    return report, res


def _mc_report(res, min_bits, info, params, nonideal, nominal, t_max, t_max_note, *,
               summary=None, statuses=None, ok="settled") -> dict:
    """The `amcdyn mc --json` report of a finished run (every circuit). `summary`, `statuses`
    and `ok`: a circuit's own summary of `res`, its status names and its success status."""
    s = summary if summary is not None else res.summary(
        max_rel_error=None if min_bits is None else 2.0 ** -min_bits
    )
    report = dict(info)
    report["samples"] = res.n_samples
    for field, key in _MC_FIELDS:
        f = s["fields"][field]
        report[key] = {k: f[k] for k in _MC_STATS}
    report["settle_all_s"] = s["settle_all"]
    report["yield"] = s["yield"]
    report["yield_stderr"] = s["yield_stderr"]
    report["yield_criterion"] = ok if min_bits is None else f"{ok} and bits >= {min_bits:g}"
    counts = {name: 0 for name in statuses or ("settled", "not_settled", "unstable",
                                               "nonfinite", "max_steps")}
    counts.update(s["status_counts"])
    report["status_counts"] = counts
    report["t_max_s"] = t_max
    report["t_max_note"] = t_max_note
    nom = nominal.summary()
    report["nominal"] = {
        k: nom[k] for k in ("status", "settling_time_s", "rel_error", "bits", "energy_j",
                            "max_real_eig", "slowest_time_constant_s") if k in nom
    }
    report["parameters"] = params
    report["nonidealities"] = nonideal
    st = res.stats
    report["stats"] = {
        k: st[k] for k in ("chunk_size", "n_devices", "n_resumed", "n_computed", "compile_s",
                           "run_s", "samples_per_s")
    }
    return report


def _run_mc_solver(args, spec, info, params, nonideal, programming, prob):
    """`amcdyn mc` of a solver-style entry (BlockAMC, the macro): its `mc_sample` through the
    generic engine `amcdyn.monte_carlo` (compiled chunks, progress, resumable `--out`)."""
    import hashlib

    import jax

    from ._montecarlo import monte_carlo

    g0 = params["g0_s"]
    key = jax.random.key(args.seed)
    nominal = spec.solve(args, prob, g0, None, key)

    def sample_fn(k):
        return spec.mc_sample(args, prob, g0, programming, k)

    def sha(x):
        return hashlib.sha256(np.ascontiguousarray(np.asarray(x, float)).tobytes()).hexdigest()

    skip = {"out", "progress", "chunk_size", "json", "plot", "command", "circuit", "func"}
    config = {
        "circuit": args.circuit,
        "a_sha256": sha(prob.a),
        "b_sha256": sha(prob.data.get("b", np.zeros(0))),
        "args": {
            k: v for k, v in sorted(vars(args).items())
            if k not in skip and (v is None or isinstance(v, (bool, int, float, str)))
        },
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res = monte_carlo(
                sample_fn, key, args.samples, chunk_size=args.chunk_size, out=args.out,
                config=config, progress=args.progress,
            )
        except ValueError as e:
            msg = str(e)
            if msg.startswith("`out`"):
                raise UsageError("--out", msg.replace("`out`", "--out")) from None
            raise _library_error(args.circuit, e) from None
    report = _mc_report(
        res, args.min_bits, info, params, nonideal, nominal, None,
        "each step runs to its own settling (no common t_max)",
    )
    report["out"] = args.out
    if caught:
        report["warnings"] = _collect_warnings(caught)
    return report, res


def _run_mc_hpinv(args, info, params, nonideal, prob):
    """`amcdyn mc hpinv`: `hpinv_monte_carlo` (one refinement per sample in a host loop, its
    compiled steps reused; progress and the resumable `--out` of `amcdyn.monte_carlo`)."""
    import jax

    import amcdyn

    from ._hpinv import HP_STATUS, hpinv_mc_summary, hpinv_monte_carlo, hpinv_solve

    if args.offset_v:
        raise UsageError("--offset-v", "random per-sample offsets are not modelled for hpinv "
                                       "(its LP-INV draws programming variation only: --sigma)")
    opts = _hpinv_options(args, prob)
    key = jax.random.key(args.seed)
    variation = _hpinv_variation(args)
    # The nominal solve: the samples' chain with sigma = 0 (the identity draw), so it reuses
    # their compiled steps.
    nominal_variation = None if variation is None else amcdyn.Variation(0.0, kind=variation.kind)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            # The run first: a mismatching --out is refused before any solve.
            res = hpinv_monte_carlo(
                prob.a, prob.data["b"], key, args.samples, variation=variation,
                out=args.out, progress=args.progress, **opts,
            )
            nominal = hpinv_solve(prob.a, prob.data["b"], variation=nominal_variation, key=key,
                                  **opts)
        except ValueError as e:
            msg = str(e)
            if msg.startswith("`out`"):
                raise UsageError("--out", msg.replace("`out`", "--out")) from None
            raise _library_error(args.circuit, e) from None
    max_rel = None if args.min_bits is None else 2.0 ** -args.min_bits
    report = _mc_report(
        res, args.min_bits, info, params, nonideal, nominal, None,
        "each analog step runs to its own settling (no common t_max); settling_time_s is the "
        "total time of the refinement (analog settling + HP-MVM over all cycles)",
        summary=hpinv_mc_summary(res, max_rel_error=max_rel), statuses=HP_STATUS,
        ok="converged",
    )
    report["out"] = args.out
    if caught:
        report["warnings"] = _collect_warnings(caught)
    return report, res


def _fmt_quantity(x: float | None, unit: str) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    if unit == "ns":
        return f"{x * 1e9:.4g} ns"
    return _si(x, unit)


def format_mc_summary(r: dict) -> str:
    p, q = r["parameters"], r["nonidealities"]
    shape = _shape_text(r)
    lines = [
        f"amcdyn MC {r['circuit'].upper()} {shape}  matrix={r['matrix']}  samples={r['samples']}"
        f"  method={p['method']}  seed={q['seed']}",
        f"  G0={_si(p['g0_s'], 'S')}  A0={p['a0']:.3g}  f_GBW={_si(p['f_gbw_hz'], 'Hz')}  "
        f"eps={p['tol']:.3g}  t_max="
        + ("per step" if r["t_max_s"] is None else f"{r['t_max_s'] * 1e9:.4g} ns"),
    ]
    parts = []
    if q["sigma"]:
        parts.append(f"{q['variation']} variation sigma={q['sigma']:g}")
    if q["g_max_s"] is not None:
        lv = f"{q['levels']} levels in " if q["levels"] else "window "
        parts.append(f"{lv}[{_si(q['g_min_s'], 'S')}, {_si(q['g_max_s'], 'S')}] "
                     f"({q['window_mode']})")
    if q["wire_r_ohm"]:
        parts.append(f"wires {q['wire_r_ohm']:g} ohm/segment")
    if q["offset_v"]:
        parts.append(f"offset sigma {_si(q['offset_v'], 'V')}")
    if q["f_p2_hz"]:
        parts.append(f"f_p2={_si(q['f_p2_hz'], 'Hz')}")
    lines.append("  non-idealities: " + ("; ".join(parts) if parts else "none"))
    nom = r["nominal"]
    ts = nom["settling_time_s"]
    lines.append(
        f"  nominal: {nom['status']}, settling "
        f"{_fmt_quantity(ts, 'ns')}, rel. error {nom['rel_error']:.3e}"
    )
    rows = [
        ("settling time", r["settling_time_s"], lambda x: _fmt_quantity(x, "ns")),
        ("rel. error", r["rel_error"], lambda x: "-" if not math.isfinite(x) else f"{x:.3e}"),
        ("bits", r["bits"], lambda x: "-" if not math.isfinite(x) else f"{x:.2f}"),
        ("energy", r["energy_j"], lambda x: _fmt_quantity(x, "J")),
        ("max |V_out|", r["max_abs_output_v"], lambda x: _fmt_quantity(x, "V")),
    ]
    lines.append(f"{'':16}{'p5':>14}{'p50':>14}{'p95':>14}")
    for name, d, fmt in rows:
        lines.append(f"{name:16}" + "".join(f"{fmt(d[k]):>14}" for k in ("p5", "p50", "p95")))
    n = r["samples"]
    y = r["yield"]
    lines.append(
        f"yield:          {100 * y:.2f} % +- {100 * r['yield_stderr']:.2f} %  "
        f"({r['yield_criterion']})"
    )
    counts = ", ".join(f"{k} {v}" for k, v in r["status_counts"].items() if v)
    lines.append(f"status:         {counts}  (of {n})")
    st = r["stats"]
    rate = st["samples_per_s"]
    lines.append(
        f"run:            {st['n_computed']} computed"
        + (f", {st['n_resumed']} resumed" if st["n_resumed"] else "")
        + f", compile {st['compile_s']:.1f} s"
        + (f", {rate:,.0f} samples/s" if math.isfinite(rate) else "")
    )
    if r.get("out"):
        lines.append(f"out:            {r['out']}")
    return "\n".join(lines)


def plot_mc(res, path: str, report: dict) -> None:
    """Histograms of the settling time (ns) and of the relative error (log scale)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    n = res.n_samples
    bins = int(min(60, max(10, math.sqrt(n))))
    nom = report["nominal"]

    t = np.asarray(res["settling_time"], dtype=float)
    t = t[np.isfinite(t)] * 1e9
    if t.size:
        ax1.hist(t, bins=bins, color="C0")
        for k, ls in (("p50", "-"), ("p95", "--")):
            v = report["settling_time_s"][k]
            if v is not None and math.isfinite(v):
                ax1.axvline(v * 1e9, color="k", ls=ls, lw=1, label=f"{k} {v * 1e9:.4g} ns")
    else:
        ax1.text(0.5, 0.5, "no sample settled", ha="center", va="center",
                 transform=ax1.transAxes)
    if math.isfinite(nom["settling_time_s"]):
        ax1.axvline(nom["settling_time_s"] * 1e9, color="C3", ls=":", lw=1.5,
                    label=f"nominal {nom['settling_time_s'] * 1e9:.4g} ns")
    ax1.set_xlabel("settling time (ns)")
    ax1.set_ylabel("samples")
    ax1.set_title(f"settled: {t.size} of {n}")
    if ax1.get_legend_handles_labels()[0]:
        ax1.legend(fontsize="small")

    e = np.asarray(res["rel_error"], dtype=float)
    e = e[np.isfinite(e) & (e > 0)]
    if e.size:
        lo, hi = float(e.min()), float(e.max())
        if hi > lo:
            ax2.hist(e, bins=np.geomspace(lo, hi, bins + 1), color="C1")
        else:
            ax2.hist(e, bins=1, color="C1")
        ax2.set_xscale("log")
        for k, ls in (("p50", "-"), ("p95", "--")):
            v = report["rel_error"][k]
            if v is not None and math.isfinite(v) and v > 0:
                ax2.axvline(v, color="k", ls=ls, lw=1, label=f"{k} {v:.3g}")
        ax2.legend(fontsize="small")
    else:
        ax2.text(0.5, 0.5, "no finite relative error", ha="center", va="center",
                 transform=ax2.transAxes)
    ax2.set_xlabel("relative error ||x - x*|| / ||x*||")
    ax2.set_ylabel("samples")
    ax2.set_title(f"yield {100 * report['yield']:.1f} % ({report['yield_criterion']})")
    fig.suptitle(f"amcdyn mc {report['circuit']} {report['matrix']}: {n} samples")
    fig.savefig(path, dpi=120)


def _sanitize(obj: Any, path: str, bad: dict[str, str]) -> Any:
    """Replace non-finite floats by None (valid JSON), noting them in `bad`."""
    if isinstance(obj, dict):
        return {k: _sanitize(v, f"{path}.{k}" if path else k, bad) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_sanitize(v, f"{path}[{i}]", bad) for i, v in enumerate(obj)]
    if isinstance(obj, float) and not math.isfinite(obj):
        bad[path] = "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
        return None
    return obj


def to_json(report: dict) -> str:
    """One JSON object; NaN/inf become null and are listed under `nonfinite`."""
    bad: dict[str, str] = {}
    clean = _sanitize(report, "", bad)
    clean["nonfinite"] = bad
    return json.dumps(clean, allow_nan=False)


def _si(x: float, unit: str) -> str:
    if not math.isfinite(x):
        return f"{x} {unit}"
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""), (1e-3, "m"), (1e-6, "u"),
                          (1e-9, "n"), (1e-12, "p")):
        if abs(x) >= scale:
            return f"{x / scale:.4g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def format_summary(r: dict) -> str:
    p = r["parameters"]
    spec = CIRCUITS[r["circuit"]]
    if spec.solve is not None:
        return _format_solver_summary(r)
    if spec.headline is not None:
        head, target = spec.headline(r)
    else:
        head = (f"amcdyn {r['circuit'].upper()} {_shape_text(r)}  matrix={r['matrix']}  "
                f"method={p['method']}")
        target = "the solution"
    lines = [
        head,
        f"  G0={_si(p['g0_s'], 'S')}  A0={p['a0']:.3g}  f_GBW={_si(p['f_gbw_hz'], 'Hz')}  "
        f"eps={p['tol']:.3g}  (outputs settle to {target})",
        f"status:        {r['status']}",
    ]
    ts = r["settling_time_s"]
    t_max = f"t_max = {r['t_max_s'] * 1e9:.4g} ns"
    if math.isfinite(ts):
        lines.append(f"settling time: {ts * 1e9:.4g} ns")
    else:
        why = {
            "not_settled": f"not settled within {t_max}",
            "unstable": "none (unstable)",
            "nonfinite": "none (non-finite transient)",
            "max_steps": f"unknown (ODE step budget spent before {t_max})",
        }.get(r["status"], str(ts))
        lines.append(f"settling time: {why}")
    lines.append(f"rel. error:    {r['rel_error']:.3e}  ({r['bits']:.2f} bits)")
    tau = r["slowest_time_constant_s"]
    if r["stable"]:
        stab = (f"stable, max Re(lambda) = {r['max_real_eig']:.4g} 1/s, slowest time constant "
                f"{tau * 1e9:.4g} ns")
    else:
        stab = f"UNSTABLE, max Re(lambda) = {r['max_real_eig']:.4g} 1/s"
    lines.append(f"stability:     {stab}")
    lines.append(f"oscillatory:   {'yes' if r['oscillatory'] else 'no'}")
    if "ser" in r or "ser_vs_digital_zf" in r:
        parts = []
        if "ser" in r:
            parts.append(f"SER {r['ser']:.3g}, BER {r['ber']:.3g} (digital ZF: SER "
                         f"{r['ser_digital_zf']:.3g}, BER {r['ber_digital_zf']:.3g})")
        parts.append(f"vs digital ZF decisions: SER {r['ser_vs_digital_zf']:.3g}")
        lines.append(f"symbols:       {r['n_symbols']}; " + "; ".join(parts))
    hints = {**_HINTS, **spec.hints}
    if r["status"] in hints:
        lines.append(f"hint:          {hints[r['status']]}")
    return "\n".join(lines)


def _format_solver_summary(r: dict) -> str:
    """The readable summary of a solver made of several transients (BlockAMC, HP-INV)."""
    p = r["parameters"]
    name = r["circuit"].upper()
    extra = f"  stages={r['stages']}" if "stages" in r else ""
    lines = [
        f"amcdyn {name} n={r['n']}  matrix={r['matrix']}{extra}  method={p['method']}",
        f"status:        {r['status']}",
        ("solve time:    " if "program_time_s" in r else "total time:    ")
        + _fmt_quantity(r["settling_time_s"], "ns")
        + (f"  ({r['cycles']} cycles)" if "cycles" in r else "")
        + (f"  ({len(r['steps'])} steps)" if "steps" in r else ""),
        f"rel. error:    {r['rel_error']:.3e}  ({r['bits']:.2f} bits)",
        f"energy:        {_fmt_quantity(r['energy_j'], 'J')}",
    ]
    if "program_time_s" in r:
        lines.insert(1, f"function:      {r['function']} (macro)")
        lines.append(
            f"reprogramming: {r['program_pulses']} pulses, "
            f"{_fmt_quantity(r['program_time_s'], 'ns')}, "
            f"{_fmt_quantity(r['program_energy_j'], 'J')}; total "
            f"{_fmt_quantity(r['total_time_s'], 'ns')}, {_fmt_quantity(r['total_energy_j'], 'J')}"
        )
    for step in r.get("steps", []):
        lines.append(f"  {step['name']:14} {step['status']:12} "
                     f"{_fmt_quantity(step['settling_time_s'], 'ns')}")
    return "\n".join(lines)


def plot_solution(sol, path: str, title: str = "") -> None:
    """Waveforms (ns) with the settling band and the settling time; deviation on a log scale."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ts = np.asarray(sol.ts) * 1e9
    vs = np.asarray(sol.vs)
    v_ss = np.asarray(sol.v_steady)
    tol = float(np.asarray(sol.tol))
    fs = float(np.max(np.abs(v_ss))) if np.any(v_ss != 0) else 1.0
    t_s = float(np.asarray(sol.settling_time)) * 1e9

    fig = Figure(figsize=(8, 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    with np.errstate(invalid="ignore"):
        shown = np.where(np.isfinite(vs), vs, np.nan)
    ax.plot(ts, shown, lw=1)
    for i, v in enumerate(v_ss):
        ax.axhspan(v - tol * fs, v + tol * fs, color="0.5", alpha=0.25, lw=0,
                   label=f"settling band ±{tol:g}·max|v*|" if i == 0 else None)
    dev = np.max(np.abs(shown - v_ss[None, :]), axis=1) / fs
    ax2.semilogy(ts, np.where(dev > 0, dev, np.nan), color="C0",
                 label="max_i |v_i - v*_i| / max|v*|")
    ax2.axhline(tol, color="k", ls="--", lw=1, label=f"ε = {tol:g}")
    if math.isfinite(t_s):
        for a_ in (ax, ax2):
            a_.axvline(t_s, color="C3", ls=":", lw=1.5,
                       label=f"settling time {t_s:.4g} ns" if a_ is ax else None)
    ax.set_ylabel("output voltage (V)")
    ax2.set_ylabel("relative deviation")
    ax2.set_xlabel("time (ns)")
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    ax2.legend(loc="best", fontsize="small")
    fig.savefig(path, dpi=120)


# ---------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------


def _fail(parser: argparse.ArgumentParser, err: UsageError) -> int:
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {err}", file=sys.stderr)
    return EXIT_USAGE


_NUMERIC_FLAGS = {
    "--g0", "--a0", "--gbw", "--tol", "--t-max", "--max-steps", "--g-in", "--gf", "--sigma",
    "--levels", "--gmin", "--gmax", "--wire-r", "--offset-v", "--f-p2", "--seed", "--samples",
    "--chunk-size", "--min-bits", "--lam", "--snr-db", "--users", "--antennas", "--size",
    "--channel-seed",
}


def _join_negative_values(argv: list[str]) -> list[str]:
    """`--g0 -1e-4` -> `--g0=-1e-4`, so that argparse reports the value as out of range.

    (argparse only treats `-5` and `-.5` as negative numbers before Python 3.13; `-1e-4`
    would be taken for an option and the error would be "expected one argument".)
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok in _NUMERIC_FLAGS and i + 1 < len(argv) and argv[i + 1].startswith("-"):
            try:
                float(argv[i + 1])
            except ValueError:
                pass
            else:
                out.append(f"{tok}={argv[i + 1]}")
                i += 2
                continue
        out.append(tok)
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 settled or Monte Carlo completed,
    3 not settled, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    default_case = not argv
    if default_case:
        argv = list(DEFAULT_ARGV)
    elif argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv = list(DEFAULT_ARGV[:2]) + argv  # `amcdyn --json` = `amcdyn simulate inv --json`
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(_join_negative_values(argv))
        spec = CIRCUITS.get(getattr(args, "circuit", None) or "")
        if unknown and (spec is None or spec.implemented):  # a pending circuit takes anything
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as e:  # argparse: --help, --version or a usage error
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE

    from ._xla_flags import disable_cpu_eigen_threads, keep_freed_host_memory

    disable_cpu_eigen_threads()  # must precede the first JAX computation
    keep_freed_host_memory()
    if args.command == "mc":
        return _main_mc(args)
    if args.command == "design":
        from ._design_cli import run_design

        return run_design(args)
    import jax

    prev_x64 = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)  # before any array is built
    try:
        try:
            report, sol = _run(args)
        except UsageError as err:
            return _fail(args._parser, err)
        if args.plot is not None:
            title = f"amcdyn {args.circuit.upper()} {report['matrix']}: {report['status']}"
            try:
                plot_solution(sol, args.plot, title)
            except OSError as e:
                return _fail(args._parser, UsageError("--plot", f"cannot write: {e}"))
            report["plot"] = args.plot
    finally:
        jax.config.update("jax_enable_x64", prev_x64)

    if args.json:
        print(to_json(report))
    else:
        if default_case:
            print(f"(default case: amcdyn {' '.join(DEFAULT_ARGV)}; see amcdyn --help)")
        print(format_summary(report))
        if args.plot is not None:
            print(f"plot:          {args.plot}")
    ok = CIRCUITS[args.circuit].ok_statuses
    return EXIT_SETTLED if report["status"] in ok else EXIT_NOT_SETTLED


def _main_mc(args: argparse.Namespace) -> int:
    import jax

    prev_x64 = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)  # before any array is built
    try:
        try:
            report, res = _run_mc(args)
        except UsageError as err:
            return _fail(args._parser, err)
        except KeyboardInterrupt:
            where = ""
            if args.out and os.path.exists(args.out):
                where = (f"; the samples done so far are in {args.out}: run the same command "
                         "again to resume")
            print(f"\namcdyn mc: interrupted{where}", file=sys.stderr)
            return 130
        if args.plot is not None:
            try:
                plot_mc(res, args.plot, report)
            except OSError as e:
                return _fail(args._parser, UsageError("--plot", f"cannot write: {e}"))
            report["plot"] = args.plot
    finally:
        jax.config.update("jax_enable_x64", prev_x64)

    if args.json:
        print(to_json(report))
    else:
        print(format_mc_summary(report))
        if args.plot is not None:
            print(f"plot:           {args.plot}")
    return EXIT_SETTLED
