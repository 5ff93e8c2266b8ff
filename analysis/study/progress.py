"""Progress on the long commands: tqdm bars on stderr, so that stdout stays what a script reads.

`pliable report` and `pliable spectrum` draw theirs only on a terminal (never into a log or a
pipe) and not with `--no-progress`; `pliable bench`'s bar adds an ETA from the cells that ended.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

# the bench bar: tqdm's own, its rate-based remaining time replaced by `eta_postfix`
BENCH_BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


def progress_bar(iterable=None, enabled: bool = True, **settings) -> tqdm:
    """A tqdm bar on the current stderr, drawn only when `enabled` and stderr is a terminal;
    it leaves no line behind."""
    stream = sys.stderr  # looked up now: tests and callers may have replaced it
    return tqdm(iterable, file=stream, disable=not (enabled and stream.isatty()),
                dynamic_ncols=True, leave=False, **settings)


def eta_text(elapsed: float, ended: int, remaining: int) -> str:
    """'ETA h:mm:ss' at the pace of the cells that ended so far: wall-clock seconds per ended
    cell (so cells running side by side count once) times the cells remaining; 'ETA ?' before
    any ended. Skipped cells took no time and must not be counted in `ended`."""
    if remaining <= 0:
        return "ETA 00:00"
    if ended <= 0:
        return "ETA ?"
    return f"ETA {tqdm.format_interval(elapsed / ended * remaining)}"


def eta_postfix(bar: tqdm) -> str:
    """`eta_text` of a bar whose `initial` counts the cells skipped before it started."""
    return eta_text(bar.format_dict["elapsed"], bar.n - bar.initial, bar.total - bar.n)

