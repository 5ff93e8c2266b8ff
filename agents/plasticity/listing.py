"""`pliable strategies`: every registered strategy, what it does (its docstring), its settings and
defaults (its Settings dataclass) and its paper (its `paper`), as text, as the manual's full table
(docs/strategies.md) or as the README's compact one (first sentence, paper's authors)."""

from __future__ import annotations

import dataclasses

from agents.errors import ConfigError
from agents.plasticity.catalogue import STRATEGIES

USAGE = """\
Switch strategies on in a config's `plasticity:` mapping or on the command line:
  python train.py plasticity.redo={} plasticity.l2.coef=1e-4
"""
README_MARKERS = ("<!-- strategies:start -->\n", "<!-- strategies:end -->")
TABLE_HEADER = ("| name | what it does | key settings (defaults) | paper |\n"
                "|---|---|---|---|\n")
COMPACT_HEADER = "| name | what it does | paper |\n|---|---|---|\n"
COMPACT_WIDTH = 170  # characters of the docstring's first sentence the README's table shows


def settings_fields(settings_cls, prefix: str = "") -> list[tuple[str, str, object]]:
    """(dotted key, type name, default) of every setting; nested settings as dotted keys."""
    fields = []
    for f in dataclasses.fields(settings_cls):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            fields += settings_fields(type(default), f"{prefix}{f.name}.")
        else:
            kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", f.type)
            fields.append((f"{prefix}{f.name}", kind, default))
    return fields


def settings_lines(settings_cls, prefix: str = "") -> list[str]:
    """`key: type = default` for every setting (nested settings as dotted keys)."""
    return [f"{key}: {kind} = {default!r}"
            for key, kind, default in settings_fields(settings_cls, prefix)]


def summary(cls) -> str:
    """The strategy's docstring on one line."""
    return " ".join((cls.__doc__ or "").split())


def describe_strategies() -> str:
    """`pliable strategies`: every strategy, what it does, its settings and defaults, its paper."""
    blocks = []
    for name in sorted(STRATEGIES):
        cls = STRATEGIES[name]
        settings = [f"plasticity.{name}.{line}" for line in settings_lines(cls.Settings)]
        lines = [name, summary(cls), *(settings or ["(no settings)"]), f"paper: {cls.paper}"]
        blocks.append("\n    ".join(lines))
    return USAGE + "\n" + "\n\n".join(blocks) + "\n"


def config_value(value) -> str:
    """A default as a config file writes it (null, true, [heads])."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(config_value(v) for v in value) + "]"
    return str(value)


def table_cell(text: str) -> str:
    return text.replace("|", "\\|")  # a bare | would end the cell (|h|, E|h_i|)


def first_sentence(text: str, width: int = COMPACT_WIDTH) -> str:
    """Up to the first full stop, cut at a word before `width` characters (…)."""
    sentence = text.split(". ", 1)[0].rstrip(".") + "."
    if len(sentence) <= width:
        return sentence
    return sentence[:width].rsplit(" ", 1)[0].rstrip(",;:") + " …"


def strategies_markdown(compact: bool = False) -> str:
    """`pliable strategies --markdown`: one row per strategy; the manual's full table (what it
    does, settings and defaults, paper) or, `compact`, the README's (first sentence, the paper's
    authors and year)."""
    rows = []
    for name in sorted(STRATEGIES):
        cls = STRATEGIES[name]
        if compact:
            cells = [f"`{name}`", first_sentence(summary(cls)), cls.paper.split(",", 1)[0]]
        else:
            settings = ", ".join(f"`{key}` ({config_value(default)})"
                                 for key, _, default in settings_fields(cls.Settings)) or "—"
            cells = [f"`{name}`", summary(cls), settings, cls.paper]
        rows.append("| " + " | ".join(table_cell(c) for c in cells) + " |\n")
    return (COMPACT_HEADER if compact else TABLE_HEADER) + "".join(rows)


def with_table(text: str, compact: bool = False) -> str:
    """`text` (the README, the manual's strategies page) with `strategies_markdown(compact)`
    between its README_MARKERS, in place of the old."""
    start, end = README_MARKERS
    if start not in text or end not in text.split(start, 1)[1]:
        raise ConfigError(f"no strategy table to replace: the file needs the lines "
                          f"{start.strip()} and {end}")
    before, rest = text.split(start, 1)
    return before + start + strategies_markdown(compact) + end + rest.split(end, 1)[1]
