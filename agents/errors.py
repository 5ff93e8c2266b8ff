"""The ground floor: the one error every layer raises for bad user input, and the valid ranges
that config and strategy dataclasses declare on their fields (checked in one place,
`check_ranges`).

A field declares its range in its metadata: `num_envs: int = field(default=8,
metadata=at_least(1))`, `gamma: float = field(default=0.99, metadata=between(0, 1))`. Optional
fields are checked only when set; a list field's range (`each=True`) holds for every element; a
field typed by another dataclass (or a list of them) is checked inside, its keys dotted."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass


class ConfigError(ValueError):
    """Bad user input (a config, an override, a run directory, a checkpoint); the CLI prints it
    as one line and exits with status 2."""


def library_message(exc: BaseException) -> str:
    """A library's own error as one line: its type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0].strip()}" if lines else type(exc).__name__


@dataclass(frozen=True)
class Range:
    """low ≤ (or <) value ≤ (or <) high; None: unbounded on that side. `note` follows the bound
    in the message (what a boundary value means)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False  # an int field: low 1 reads "a positive integer"
    each: bool = False  # a list: every element
    note: str = ""

    def contains(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        """The range as the message reads it: "be >= 0", "lie in (0, 1]", ..."""
        note = f" ({self.note})" if self.note else ""
        low, high = _number(self.low), _number(self.high)
        if self.high is None:
            if self.integer and self.low == 1 and not self.low_open:
                return f"be a positive integer{note}"
            return f"be {'>' if self.low_open else '>='} {low}{note}"
        if self.low is None:
            return f"be {'<' if self.high_open else '<='} {high}{note}"
        return (f"lie in {'(' if self.low_open else '['}{low}, {high}"
                f"{')' if self.high_open else ']'}{note}")


def _number(bound) -> str:
    if bound is None:
        return ""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def between(low=None, high=None, *, low_open: bool = False, high_open: bool = False,
            integer: bool = False, each: bool = False, note: str = "") -> dict:
    """Field metadata declaring a range (see `Range`)."""
    return {"range": Range(low, high, low_open, high_open, integer, each, note)}


def at_least(low: int = 1, *, each: bool = False, note: str = "") -> dict:
    """A count: an integer >= low (1: "a positive integer")."""
    return between(low, integer=True, each=each, note=note)


def non_negative(*, each: bool = False, note: str = "") -> dict:
    """A coefficient, a size or a threshold: >= 0."""
    return between(0, each=each, note=note)


def positive(*, each: bool = False, note: str = "") -> dict:
    """A scale, a tolerance, a norm: > 0."""
    return between(0, low_open=True, each=each, note=note)


def probability(*, each: bool = False, note: str = "") -> dict:
    """A probability, a rate, a share: in [0, 1]."""
    return between(0, 1, each=each, note=note)


def factor(*, each: bool = False, note: str = "") -> dict:
    """A multiplicative factor or a fraction that must not vanish: in (0, 1]."""
    return between(0, 1, low_open=True, each=each, note=note)


def decay_rate(*, each: bool = False, note: str = "") -> dict:
    """A running-average decay, Adam's β: in [0, 1)."""
    return between(0, 1, high_open=True, each=each, note=note)


SEED_MAX = 2**32 - 1  # numpy's legacy seeding (np.random.seed) takes 0 .. 2**32 - 1


def seed_range(note: str = "") -> dict:
    return between(0, SEED_MAX, integer=True, note=note)


def _nested(hint) -> tuple[type | None, bool]:
    """The dataclass a field's type names (itself, Optional of it, or a list of it), and whether
    it is a list."""
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _nested(args[0]) if len(args) == 1 else (None, False)
    if origin is list:
        args = typing.get_args(hint)
        inner = args[0] if args else None
        return (inner, True) if dataclasses.is_dataclass(inner) else (None, False)
    return (hint, False) if dataclasses.is_dataclass(hint) else (None, False)


def _hints(schema: type) -> dict:
    try:
        return typing.get_type_hints(schema)
    except Exception:  # an unresolvable annotation: no nesting below this class
        return {}


def check_ranges(node, schema: type, prefix: str = "") -> None:
    """Every field of `node` (a dataclass instance or an OmegaConf node of `schema`) within the
    range its `schema` field declares, recursively; the first one outside is a one-line
    ConfigError naming the dotted key, the range and the value."""
    hints = _hints(schema)
    for f in dataclasses.fields(schema):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(node, f.name)
        if value is None:
            continue
        valid = f.metadata.get("range")
        if valid is not None:
            if valid.each:
                for i, element in enumerate(list(value)):
                    if not valid.contains(element):
                        raise ConfigError(f"{key}[{i}] must {valid.describe()}, got {element} "
                                          f"(in {list(value)})")
            elif not valid.contains(value):
                raise ConfigError(f"{key} must {valid.describe()}, got {value}")
        inner, is_list = _nested(hints.get(f.name))
        if inner is None:
            continue
        if is_list:
            for i, element in enumerate(value):
                check_ranges(element, inner, f"{key}[{i}]")
        else:
            check_ranges(value, inner, key)


def declared_ranges(schema: type, prefix: str = "") -> dict[str, Range]:
    """Dotted key -> declared range, for every field of `schema` with one (nested dataclasses
    included; a list of dataclasses is entered at its element [0])."""
    ranges, hints = {}, _hints(schema)
    for f in dataclasses.fields(schema):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if "range" in f.metadata:
            ranges[key] = f.metadata["range"]
        inner, is_list = _nested(hints.get(f.name))
        if inner is not None:
            ranges.update(declared_ranges(inner, f"{key}[0]" if is_list else key))
    return ranges
