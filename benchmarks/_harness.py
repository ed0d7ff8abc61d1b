"""What the benchmarks share: measure each case in a fresh process, print the results as a table.

A benchmark module calls :func:`child_main` first in its ``main`` (the child side: run
``measure(*args)`` and print its result as JSON) and :func:`run_child` to start one
measurement (the parent side), then :func:`print_table` and :func:`print_ratio` for the results.
"""

from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
from typing import Any, Callable, Sequence


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_main(child_args: Sequence[str] | None, measure: Callable[..., dict]) -> bool:
    """If *child_args* were given (``--child ...``), print ``measure(*child_args)`` as JSON and return True."""
    if not child_args:
        return False
    print(json.dumps(measure(*child_args)))
    return True


def run_child(module: str, *args: Any) -> dict:
    """``python -m <module> --child <args>`` in a fresh process (so peak RSS is its own); its result."""
    proc = subprocess.run([sys.executable, "-m", module, "--child", *map(str, args)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(columns: Sequence[tuple[str, str, str]], rows: Sequence[dict]) -> None:
    """One line per result: *columns* are (key, heading, format spec with width, e.g. ``>11,.0f``)."""
    print(" ".join(f"{heading:{re.match(r'[<>^]?[0-9]*', spec).group()}}" for _, heading, spec in columns))
    for row in rows:
        print(" ".join(f"{row[key]:{spec}}" for key, _, spec in columns))


def print_ratio(label: str, numerator: float, denominator: float, spec: str, suffix: str = "") -> None:
    """``ratio <label>: <numerator / denominator><suffix>``."""
    print(f"ratio {label}: {numerator / denominator:{spec}}{suffix}")
