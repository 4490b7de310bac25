"""The notebook parameters: what each one means and which values are allowed, checked before any work.

``make report`` passes overrides (``PARAMS_FILE`` YAML, ``-p NAME VALUE``) to the notebooks that
declare them. Each override is checked here, against the spec of *every* notebook that declares it,
before the first notebook starts: a bad value fails at once, in one line naming the parameter, the
value and what is allowed, instead of after minutes of training. Values are also normalized: PyYAML
reads ``1e-3`` as a string (YAML 1.1 needs a dot: ``1.0e-3``), so number-like strings are accepted
where a number is expected, and ``None``/``null`` where None is allowed.

To add a notebook parameter, add its :class:`Param` to :data:`SPEC` under the notebook's name;
``tests/test_params.py`` fails, naming it, when a notebook declares a parameter missing here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["Param", "ParameterError", "SPEC", "MAX_SEED", "check_overrides", "check_value", "notebook_spec",
           "integer", "real", "choice", "flag", "int_list", "real_list", "path"]


class ParameterError(ValueError):
    """A parameter override has a value its notebook cannot use; the message says what is allowed."""


class _Reject(Exception):
    """The value does not fit (internal: turned into a ParameterError naming the parameter)."""


@dataclass(frozen=True)
class Param:
    """One notebook parameter: ``allowed`` (in words), its ``meaning``, and ``convert``, which returns
    the normalized value or raises for a value outside ``allowed``."""

    allowed: str
    meaning: str
    convert: Callable[[Any], Any]

    def check(self, value):
        """The normalized value, or :class:`_Reject`."""
        return self.convert(value)


# --------------------------------------------------------------------------- value kinds
_NONE_WORDS = ("none", "null", "~")


def _nullable(convert, none: bool):
    def wrapped(value):
        if none and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS)):
            return None
        if value is None:
            raise _Reject
        return convert(value)
    return wrapped


def _to_int(value) -> int:
    if isinstance(value, bool):
        raise _Reject
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise _Reject from None
    raise _Reject


def _to_float(value) -> float:
    if isinstance(value, bool):
        raise _Reject
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):  # "1e-3": PyYAML's reading of a float written without a dot
        try:
            number = float(value.strip())
        except ValueError:
            raise _Reject from None
    else:
        raise _Reject
    if not math.isfinite(number):
        raise _Reject
    return number


def _bound_text(minimum, exclusive: bool) -> str:
    return f"> {minimum:g}" if exclusive else f">= {minimum:g}"


def _in_range(x, minimum, exclusive: bool, maximum=None):
    if minimum is not None and (x <= minimum if exclusive else x < minimum):
        raise _Reject
    if maximum is not None and x > maximum:
        raise _Reject
    return x


#: The largest seed: seeds are 64-bit signed integers in torch's generators and in the results tables.
MAX_SEED = 2**63 - 1


def _upper_text(maximum) -> str:
    if maximum is None:
        return ""
    return " and < 2**63" if maximum == MAX_SEED else f" and <= {maximum:,}"


def integer(minimum: int, meaning: str, *, maximum: int | None = None, none: str | None = None) -> Param:
    """An integer ``>= minimum`` (and ``<= maximum``); with ``none`` (what None means), also None."""
    allowed = f"an integer >= {minimum}{_upper_text(maximum)}" + (f", or None ({none})" if none else "")
    return Param(allowed, meaning, _nullable(lambda v: _in_range(_to_int(v), minimum, False, maximum), bool(none)))


def real(minimum: float, meaning: str, *, exclusive: bool = False, none: str | None = None) -> Param:
    """A finite number ``>= minimum`` (``> minimum`` when ``exclusive``); ``1e-3`` strings accepted."""
    allowed = f"a number {_bound_text(minimum, exclusive)}" + (f", or None ({none})" if none else "")
    return Param(allowed, meaning, _nullable(lambda v: _in_range(_to_float(v), minimum, exclusive), bool(none)))


def choice(values: tuple, meaning: str) -> Param:
    """One of ``values`` (None among them allows None and the words none/null)."""
    allowed = "one of " + ", ".join("None" if v is None else repr(v) if isinstance(v, str) else str(v) for v in values)
    concrete = tuple(v for v in values if v is not None)

    def convert(value):
        for v in concrete:
            if isinstance(v, bool) != isinstance(value, bool):
                continue
            if value == v:
                return v
        raise _Reject
    return Param(allowed, meaning, _nullable(convert, None in values))


def flag(meaning: str, *, none: str | None = None) -> Param:
    """True or False (YAML: true/false, yes/no); with ``none``, also None."""
    allowed = "true or false" + (f", or None ({none})" if none else "")

    def convert(value):
        if not isinstance(value, bool):
            raise _Reject
        return value
    return Param(allowed, meaning, _nullable(convert, bool(none)))


def _list(item, *, distinct: bool):
    def convert(value):
        if not isinstance(value, (list, tuple)) or len(value) == 0:
            raise _Reject
        items = [item(v) for v in value]
        if distinct and len(set(items)) != len(items):
            raise _Reject
        return items
    return convert


def int_list(minimum: int, meaning: str, example: str, *, maximum: int | None = None, distinct: bool = False,
             none: str | None = None) -> Param:
    """A non-empty list of integers ``>= minimum`` (and ``<= maximum``); with ``none``, also None."""
    allowed = (f"a non-empty list of {'distinct ' if distinct else ''}integers >= {minimum}{_upper_text(maximum)}, "
               f"e.g. {example}" + (f", or None ({none})" if none else ""))
    convert = _list(lambda v: _in_range(_to_int(v), minimum, False, maximum), distinct=distinct)
    return Param(allowed, meaning, _nullable(convert, bool(none)))


def real_list(minimum: float, meaning: str, example: str, *, exclusive: bool = False,
              none: str | None = None) -> Param:
    """A non-empty list of finite numbers above ``minimum``; ``1e-3`` strings accepted."""
    allowed = (f"a non-empty list of numbers {_bound_text(minimum, exclusive)}, e.g. {example}"
               + (f", or None ({none})" if none else ""))
    convert = _list(lambda v: _in_range(_to_float(v), minimum, exclusive), distinct=False)
    return Param(allowed, meaning, _nullable(convert, bool(none)))


def path(meaning: str) -> Param:
    """A non-empty folder path (a string)."""
    def convert(value):
        if not isinstance(value, (str, Path)) or not str(value).strip():
            raise _Reject
        return str(value)
    return Param("a folder path (a non-empty string)", meaning, convert)


# --------------------------------------------------------------------------- the spec
PROFILE_NAMES = ("smoke", "quick", "full", "paper")  # == hwutils.profiles.PROFILES (a test checks)
_PROFILE = choice(PROFILE_NAMES, "size of every experiment")
_RESULTS_DIR = path("cache of trained runs; a relative path is taken from where make report runs")
_FORCE = flag("retrain even when a cached run exists")
_FROM_PROFILE = "from the profile"
MAX_POINTS = 10_000_000  # point-cloud training points: making 10^7 takes ~0.8 GB (10^11 asked for 373 GiB)

#: Every parameter of every notebook: notebook name (file name without .ipynb) -> name -> Param.
SPEC: dict[str, dict[str, Param]] = {
    "01_adam_bias_correction": {
        "profile": _PROFILE,
        "n_runs": integer(2, "Monte-Carlo runs; a standard error needs two", none=_FROM_PROFILE),
        "T": integer(1, "steps per Monte-Carlo run", none=_FROM_PROFILE),
        "seed": integer(0, "random seed", maximum=MAX_SEED),
    },
    "02_point_cloud_regularization": {
        "profile": _PROFILE,
        "kind": choice(("moons", "spirals"), "shape of the 2-D point cloud"),
        "n_train": integer(10, "training points; both classes must appear; all of them are held in memory",
                           maximum=MAX_POINTS),
        "noise": real(0, "std of the Gaussian noise added to each point"),
        "hidden": int_list(1, "hidden layer widths", "[256, 256]"),
        "epochs": integer(1, "training epochs", none=_FROM_PROFILE),
        "seeds": int_list(0, "seeds of the final comparison", "[0, 1, 2]", maximum=MAX_SEED, distinct=True,
                          none=_FROM_PROFILE),
        "l1_grid": real_list(0, "L1 coefficients searched on validation, on a log axis", "[1e-4, 1e-3]",
                             exclusive=True, none=_FROM_PROFILE),
        "l2_grid": real_list(0, "L2 coefficients searched on validation, on a log axis", "[1e-4, 1e-3]",
                             exclusive=True, none=_FROM_PROFILE),
        "patience": integer(1, "early stopping: epochs without validation improvement"),
        "lr": real(0, "SGD learning rate", exclusive=True),
        "batch_size": integer(1, "minibatch size"),
        "results_dir": _RESULTS_DIR,
        "force": _FORCE,
    },
    "03_mnist_regularization": {
        "profile": _PROFILE,
        "downsample": choice((None, 7, 14, 28), "image side in pixels after average pooling; None: 28"),
        "seeds": int_list(0, "seeds of every method", "[0, 1, 2]", maximum=MAX_SEED, distinct=True,
                          none=_FROM_PROFILE),
        "epochs": integer(1, "epochs of the methods without dropout", none=_FROM_PROFILE),
        "dropout_epochs": integer(1, "epochs of the two dropout methods", none=_FROM_PROFILE),
        "hidden": int_list(1, "hidden layer widths", "[800, 800]", none=_FROM_PROFILE),
        "lr_grid": real_list(0, "learning rates searched with each method's constant (the learning-rate study)",
                             "[0.01, 0.1, 1.0]", exclusive=True, none=_FROM_PROFILE),
        "precision": choice((None, "fp32", "tf32", "bf16"),
                            "precision of the matrix products (None: TF32 on CUDA, FP32 on the CPU)"),
        "results_dir": _RESULTS_DIR,
        "force": _FORCE,
    },
}


def notebook_spec(notebook) -> dict[str, Param]:
    """The spec of one notebook (a path or its name); empty for a notebook not in :data:`SPEC`."""
    return SPEC.get(Path(str(notebook)).stem, {})


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_value(name: str, value, notebook) -> Any:
    """``value`` normalized for parameter ``name`` of ``notebook``, or a one-line ParameterError."""
    stem = Path(str(notebook)).stem
    param = notebook_spec(stem).get(name)
    if param is None:
        raise ParameterError(f"parameter {name} of {stem} has no entry in hwutils/params.py SPEC, so it "
                             f"cannot be checked; add one there")
    try:
        return param.check(value)
    except (_Reject, TypeError, ValueError, OverflowError):
        raise ParameterError(f"bad value {_shown(value)} for parameter {name} ({param.meaning}): {stem} takes "
                             f"{param.allowed}") from None


def check_overrides(overrides: dict, declared: dict) -> dict:
    """Per notebook, the overrides it declares, each checked and normalized.

    ``declared``: notebook (path or name) -> the parameter names its parameters cell declares. A
    value must be valid for every notebook that declares the name (``hidden`` goes to 02 and 03).
    """
    return {nb: {name: check_value(name, value, nb) for name, value in overrides.items() if name in names}
            for nb, names in declared.items()}
