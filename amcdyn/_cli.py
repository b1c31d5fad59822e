"""The `amcdyn` command line: simulate one INV or MVM circuit, or a Monte Carlo of it.

    amcdyn                                     # the default case: INV on random-dd:8
    amcdyn simulate inv --matrix A.npy --rhs b.npy [options]
    amcdyn simulate mvm --matrix A.csv --input x.csv [--gf G] [options]
    amcdyn mc inv --matrix A.npy --rhs b.npy --samples 10000 --sigma 0.05 [options]
    amcdyn mc mvm --matrix A.csv --input x.csv --samples 1000 --sigma 0.05 [options]

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
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Sequence
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


def _common(p: argparse.ArgumentParser, *, mc: bool = False) -> None:
    p.add_argument(
        "--matrix",
        default=DEFAULT_MATRIX,
        metavar="FILE|SPEC",
        help=f"the matrix A: .npy/.csv file or generator spec (default {DEFAULT_MATRIX})",
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
    return parser


_MC_EPILOG = """\
Monte Carlo: sample i uses the key fold_in(key(seed), i), so results do not depend on
  --chunk-size and an interrupted run with --out resumes where it stopped.
exit status: 0 the run completed (whatever its yield); 2 bad input.
"""


def _add_circuits(cmd: argparse.ArgumentParser, epilog: str, fmt, *, mc: bool) -> None:
    circuits = cmd.add_subparsers(dest="circuit", metavar="CIRCUIT")
    circuits.required = True

    inv = circuits.add_parser(
        "inv",
        help="closed-loop matrix inversion: outputs settle to -A^-1 b",
        description="INV: closed-loop solve of A x = b; the outputs settle to V = -A^-1 b.",
        epilog=epilog,
        formatter_class=fmt,
    )
    _common(inv, mc=mc)
    inv.add_argument(
        "--rhs", metavar="FILE", default=None,
        help="right-hand side b (.npy/.csv); default uniform(-1,1), seed 0, scaled so "
        "max|A^-1 b| = 1",
    )
    inv.add_argument(
        "--inverters", choices=("opamp", "ideal"), default="opamp",
        help="inverters for the negative part of A (default opamp)",
    )
    inv.add_argument(
        "--input-mode", "--input", choices=("current", "voltage"), default="current",
        dest="input_mode",
        help="inject b as currents G0*b (default) or as voltages through --g-in",
    )
    inv.add_argument(
        "--g-in", type=_float_type(), default=None, metavar="S", dest="g_in",
        help="input conductance for --input-mode voltage (default G0)",
    )
    inv.set_defaults(_parser=inv)

    mvm = circuits.add_parser(
        "mvm",
        help="open-loop matrix-vector multiply: outputs settle to -(G0/Gf) A x",
        description="MVM: open-loop y = A x with column splitting; the outputs settle to "
        "V = -(G0/G_f) A x.",
        epilog=epilog,
        formatter_class=fmt,
    )
    _common(mvm, mc=mc)
    mvm.add_argument(
        "--input", metavar="FILE", default=None,
        help="input vector x (.npy/.csv); default uniform(-1,1), seed 0",
    )
    mvm.add_argument(
        "--gf", type=_float_type(), default=None, metavar="S", dest="g_f",
        help="TIA feedback conductance G_f in siemens (default G0)",
    )
    mvm.set_defaults(_parser=mvm)


# ---------------------------------------------------------------------------------------
# input loading and validation
# ---------------------------------------------------------------------------------------

_EXTS = (".npy", ".csv", ".txt")


def load_array(path: str, flag: str) -> np.ndarray:
    """Read a real array from a `.npy` file or a comma/whitespace separated text file."""
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
        raise UsageError(flag, f"{path!r} holds complex numbers; a real array is needed")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise UsageError(flag, f"{path!r} holds {arr.dtype} data, not numbers")
    return np.asarray(arr, dtype=np.float64)


def _looks_like_file(spec: str) -> bool:
    return os.path.splitext(spec)[1].lower() in _EXTS or os.sep in spec


def resolve_matrix(spec: str) -> np.ndarray:
    """`--matrix`: an existing file, else a generator spec."""
    flag = "--matrix"
    if os.path.exists(spec) or _looks_like_file(spec):
        a = load_array(spec, flag)
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


def resolve_vector(path: str, flag: str, n: int, what: str) -> np.ndarray:
    v = load_array(path, flag)
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
    """Read the inputs and build the nominal circuit.

    Returns `(circuit, info, params, nonideal, programming)`: the report's identification,
    its nominal parameters, the non-ideality settings and the programming chain.
    """
    import amcdyn

    a = resolve_matrix(args.matrix)
    if args.plot is not None:
        _check_plot_target(args.plot)
    window = _window(args)
    if args.g0 is not None:
        g0 = args.g0
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
    info: dict[str, Any] = {"circuit": args.circuit, "matrix": args.matrix}
    if args.circuit == "inv":
        n, m = a.shape
        if n != m:
            raise UsageError("--matrix", f"must be square for INV, got shape {a.shape}")
        check_invertible(a)
        if args.g_in is not None and args.input_mode != "voltage":
            raise UsageError("--g-in", "only applies with --input-mode voltage")
        if args.rhs is None:
            b = _matrices.default_rhs(a)
            info["rhs"] = "default: uniform(-1,1), seed 0, scaled to max|A^-1 b| = 1"
        else:
            b = resolve_vector(args.rhs, "--rhs", n, f"the {n} x {n} --matrix")
            info["rhs"] = args.rhs
        info["n"] = n
        kwargs = dict(
            g0=g0,
            a0=args.a0,
            f_gbw=args.gbw,
            inverters=args.inverters,
            input_mode=args.input_mode,
            **amp_kwargs,
        )
        if args.g_in is not None:
            kwargs["g_in"] = args.g_in
        try:
            circuit = amcdyn.INV.from_matrix(a, b, **kwargs)
        except ValueError as e:
            raise _library_error("inv", e) from None
        params["inverters"] = circuit.inverters  # "none" when A has no negative entry
        params["input_mode"] = args.input_mode
        params["g_in_s"] = (args.g_in or g0) if args.input_mode == "voltage" else None
    else:
        m, n = a.shape
        if args.input is None:
            x = _matrices.default_vector(n)
            info["input"] = "default: uniform(-1,1), seed 0"
        else:
            x = resolve_vector(args.input, "--input", n, f"the {m} x {n} --matrix")
            info["input"] = args.input
        info["m"], info["n"] = m, n
        try:
            circuit = amcdyn.MVM.from_matrix(a, x, g0=g0, a0=args.a0, f_gbw=args.gbw,
                                             g_f=args.g_f, **amp_kwargs)
        except ValueError as e:
            raise _library_error("mvm", e) from None
        params["g_f_s"] = args.g_f if args.g_f is not None else g0
    return circuit, info, params, nonideal, _programming(args, window)


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

    circuit, info, params, nonideal, programming = _build(args, mc=False)
    caught: list = []
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
        if args.method == "analytic":
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

    circuit, info, params, nonideal, programming = _build(args, mc=True)
    if args.out is not None:
        _check_out_target(args.out)
    try:
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
    s = res.summary(max_rel_error=None if min_bits is None else 2.0 ** -min_bits)

    report = dict(info)
    report["samples"] = res.n_samples
    for field, key in _MC_FIELDS:
        f = s["fields"][field]
        report[key] = {k: f[k] for k in _MC_STATS}
    report["settle_all_s"] = s["settle_all"]
    report["yield"] = s["yield"]
    report["yield_stderr"] = s["yield_stderr"]
    report["yield_criterion"] = (
        "settled" if min_bits is None else f"settled and bits >= {min_bits:g}"
    )
    counts = {name: 0 for name in ("settled", "not_settled", "unstable", "nonfinite",
                                   "max_steps")}
    counts.update(s["status_counts"])
    report["status_counts"] = counts
    report["t_max_s"] = t_max
    report["t_max_note"] = (
        "given (--t-max)" if args.t_max is not None
        else f"{T_MAX_FACTOR:g} x the nominal circuit's default t_max"
    )
    nom = nominal.summary()
    report["nominal"] = {
        k: nom[k] for k in ("status", "settling_time_s", "rel_error", "bits", "energy_j",
                            "max_real_eig", "slowest_time_constant_s") if k in nom
    }
    report["parameters"] = params
    report["nonidealities"] = nonideal
    st = res.stats
    report["stats"] = {
        "chunk_size": st["chunk_size"],
        "n_devices": st["n_devices"],
        "n_resumed": st["n_resumed"],
        "n_computed": st["n_computed"],
        "compile_s": st["compile_s"],
        "run_s": st["run_s"],
        "samples_per_s": st["samples_per_s"],
    }
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
    shape = f"n={r['n']}" if r["circuit"] == "inv" else f"{r['m']}x{r['n']}"
    lines = [
        f"amcdyn MC {r['circuit'].upper()} {shape}  matrix={r['matrix']}  samples={r['samples']}"
        f"  method={p['method']}  seed={q['seed']}",
        f"  G0={_si(p['g0_s'], 'S')}  A0={p['a0']:.3g}  f_GBW={_si(p['f_gbw_hz'], 'Hz')}  "
        f"eps={p['tol']:.3g}  t_max={r['t_max_s'] * 1e9:.4g} ns",
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
    if r["circuit"] == "inv":
        head = (f"amcdyn INV n={r['n']}  matrix={r['matrix']}  inverters={p['inverters']}  "
                f"input={p['input_mode']}  method={p['method']}")
        target = "-A^-1 b"
    else:
        head = (f"amcdyn MVM {r['m']}x{r['n']}  matrix={r['matrix']}  "
                f"G_f={_si(p['g_f_s'], 'S')}  method={p['method']}")
        target = "-(G0/G_f) A x"
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
    if r["status"] in _HINTS:
        lines.append(f"hint:          {_HINTS[r['status']]}")
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
    "--chunk-size", "--min-bits",
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
        args = parser.parse_args(_join_negative_values(argv))
    except SystemExit as e:  # argparse: --help, --version or a usage error
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE

    from ._xla_flags import disable_cpu_eigen_threads

    disable_cpu_eigen_threads()  # must precede the first JAX computation
    if args.command == "mc":
        return _main_mc(args)
    import jax

    prev_x64 = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)  # before any array is built
    try:
        try:
            report, sol = _run(args)
        except UsageError as err:
            return _fail(args._parser, err)
        if args.plot is not None:
            title = f"amcdyn {args.circuit.upper()} {args.matrix}: {report['status']}"
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
    return EXIT_SETTLED if report["status"] == "settled" else EXIT_NOT_SETTLED


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
