"""A benchmark in alternating rounds, a base revision against the working tree (a benchmark,
not a test).

Why: on these machines one live pass swings by a quarter from run to run, more than most
changes move it, and the machine itself is faster or slower from one quarter of an hour
to the next. Running the two versions one after the other, round after round, pairs
each figure with one taken minutes apart: a change that is faster in every round is
faster, whatever the hour did to both. (`docs/live.md` quotes such rounds.)

    uv run python bench/ab.py --base REV [--rounds 4] [--bench live|live-cpu|replay|stages]
        [-- ARGS passed to the benchmark]

The base is checked out into a temporary git worktree (removed at the end) and runs with
this checkout's virtual environment, so both sides use the dependencies of the working
tree, but each runs its own copy of the benchmark. Odd rounds run the base, then the
working tree, even rounds the other way round; the figures are read from the
benchmark's own report.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent


class Bench(NamedTuple):
    script: str
    #: The report's figure: a number, with thousands separators or not.
    figure: re.Pattern[str]
    #: What the figure is, and whether more is better.
    unit: str
    higher_is_better: bool


BENCHES = {
    "live": Bench(
        "bench/live_bench.py", re.compile(r"RESULT: processor ([\d,]+) events/s"), "events/s", True
    ),
    # The same runs, read for the processor's CPU: no figure of the broker's or Redis's.
    "live-cpu": Bench(
        "bench/live_bench.py",
        re.compile(r"CPU: processor ([\d,]+) events per CPU s"),
        "events per CPU s",
        True,
    ),
    "replay": Bench(
        "bench/replay_bench.py", re.compile(r"replay: .* = ([\d,]+) events/s"), "events/s", True
    ),
    "stages": Bench("bench/stages.py", re.compile(r"^  all +([\d.]+) us", re.M), "us/event", False),
}


def run(bench: Bench, checkout: Path, args: list[str]) -> float:
    """One run of the benchmark from `checkout`, with its code first on the path."""
    env = os.environ | {"PYTHONPATH": str(checkout)}
    done = subprocess.run(
        [sys.executable, bench.script, *args],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    found = bench.figure.search(done.stdout)
    if done.returncode != 0 or found is None:
        sys.exit(
            f"{bench.script} in {checkout} failed (exit {done.returncode}):\n"
            f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    return float(found.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--rounds", type=int, default=4)  # even: each side first as often
    parser.add_argument("--bench", choices=sorted(BENCHES), default="live")
    parser.add_argument("args", nargs="*", help="after --: arguments for the benchmark")
    options = parser.parse_args()
    bench = BENCHES[options.bench]

    with tempfile.TemporaryDirectory(prefix="ab-base-") as folder:
        base = Path(folder) / "base"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), options.base],
            check=True,
            capture_output=True,
        )
        try:
            figures: dict[str, list[float]] = {"base": [], "head": []}
            sides = [("base", base), ("head", ROOT)]
            for number in range(1, options.rounds + 1):
                # The side that ran second lost 5-11% in most live rounds measured on
                # 2026-12-07, whichever it was: each goes first in every other round.
                for side, checkout in sides if number % 2 else sides[::-1]:
                    figures[side].append(run(bench, checkout, options.args))
                base_figure, head_figure = figures["base"][-1], figures["head"][-1]
                print(
                    f"round {number}: base {base_figure:,.2f}, head {head_figure:,.2f} "
                    f"{bench.unit} ({head_figure / base_figure - 1:+.1%})",
                    flush=True,
                )
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=True
            )
    better = sum(
        (head > base) == bench.higher_is_better
        for base, head in zip(figures["base"], figures["head"], strict=True)
    )
    base_median, head_median = (statistics.median(figures[side]) for side in ("base", "head"))
    print(
        f"RESULT: {options.bench} median base {base_median:,.2f}, head {head_median:,.2f} "
        f"{bench.unit} ({head_median / base_median - 1:+.1%}); head better in {better} of "
        f"{options.rounds} rounds"
    )


if __name__ == "__main__":
    main()
