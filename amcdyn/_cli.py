"""The `amcdyn` command line: simulate one INV or MVM circuit and report its settling.

    amcdyn                                     # the default case: INV on random-dd:8
    amcdyn simulate inv --matrix A.npy --rhs b.npy [options]
    amcdyn simulate mvm --matrix A.csv --input x.csv [--gf G] [options]

Exit status: 0 when the circuit settled, 3 when the simulation completed but the circuit did
not settle (`not_settled`, `unstable`, `nonfinite`, `max_steps`), 2 for bad input (an
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


def _int_type(text: str) -> int:
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if k < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return k


_EPILOG = """\
matrices: a .npy or .csv file, or a built-in generator name:n[:seed=s] with name one of
  {gens} (e.g. random-dd:16, wishart:32:seed=3).
exit status: 0 settled; 3 not settled, unstable, non-finite or max_steps (the report says
  which); 2 bad input.
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--matrix",
        default=DEFAULT_MATRIX,
        metavar="FILE|SPEC",
        help=f"the matrix A: .npy/.csv file or generator spec (default {DEFAULT_MATRIX})",
    )
    p.add_argument(
        "--g0", type=_float_type(), default=1e-4, metavar="S",
        help="conductance unit G0 in siemens (default 1e-4 = 100 uS)",
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
    p.add_argument(
        "--method", choices=("ode", "analytic"), default="ode",
        help="ode: diffrax integration (default); analytic: eigendecomposition closed form",
    )
    p.add_argument(
        "--t-max", type=_float_type(), default=None, metavar="S", dest="t_max",
        help="end of the simulated interval in seconds (default: from the slowest eigenvalue)",
    )
    p.add_argument(
        "--max-steps", type=_int_type, default=16384, metavar="N", dest="max_steps",
        help="ODE step budget (method ode; default 16384)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", metavar="PNG", default=None, help="write the waveform figure")


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
    circuits = sim.add_subparsers(dest="circuit", metavar="CIRCUIT")
    circuits.required = True

    inv = circuits.add_parser(
        "inv",
        help="closed-loop matrix inversion: outputs settle to -A^-1 b",
        description="INV: closed-loop solve of A x = b; the outputs settle to V = -A^-1 b.",
        epilog=epilog,
        formatter_class=fmt,
    )
    _common(inv)
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
    _common(mvm)
    mvm.add_argument(
        "--input", metavar="FILE", default=None,
        help="input vector x (.npy/.csv); default uniform(-1,1), seed 0",
    )
    mvm.add_argument(
        "--gf", type=_float_type(), default=None, metavar="S", dest="g_f",
        help="TIA feedback conductance G_f in siemens (default G0)",
    )
    mvm.set_defaults(_parser=mvm)
    return parser


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


def _run(args: argparse.Namespace) -> tuple[dict, Any]:
    import amcdyn

    a = resolve_matrix(args.matrix)
    if args.plot is not None:
        _check_plot_target(args.plot)
    params: dict[str, Any] = {
        "g0_s": args.g0,
        "a0": args.a0,
        "f_gbw_hz": args.gbw,
        "tol": args.tol,
        "method": args.method,
        "t_max_s": args.t_max,
    }
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
            g0=args.g0,
            a0=args.a0,
            f_gbw=args.gbw,
            inverters=args.inverters,
            input_mode=args.input_mode,
        )
        if args.g_in is not None:
            kwargs["g_in"] = args.g_in
        try:
            circuit = amcdyn.INV.from_matrix(a, b, **kwargs)
        except ValueError as e:
            raise _library_error("inv", e) from None
        params["inverters"] = circuit.inverters  # "none" when A has no negative entry
        params["input_mode"] = args.input_mode
        params["g_in_s"] = (args.g_in or args.g0) if args.input_mode == "voltage" else None
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
            circuit = amcdyn.MVM.from_matrix(a, x, g0=args.g0, a0=args.a0, f_gbw=args.gbw,
                                             g_f=args.g_f)
        except ValueError as e:
            raise _library_error("mvm", e) from None
        params["g_f_s"] = args.g_f if args.g_f is not None else args.g0

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
    return report, sol


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


_NUMERIC_FLAGS = {"--g0", "--a0", "--gbw", "--tol", "--t-max", "--max-steps", "--g-in", "--gf"}


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
    """Run the command line; returns the exit status (0 settled, 3 not settled, 2 bad input)."""
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
