"""How well answer equivalence agrees with a routing dataset's own grading: over every pair of the
ten most accurate models of each task, how many pairs are read as agreeing, how many of those the
data grades alike, and how many pairs graded right are read as disagreeing. Prints JSON.

    python scripts/answer_agreement.py --data ../shared/data/zeroeval
    python scripts/answer_agreement.py --data ../shared/data/zeroeval --rev 2f720b3

``--rev`` measures the reading of an earlier revision instead (its ``extract_answer``, answers
agreeing when equal and non-empty), loaded from git.
"""

import argparse
import itertools
import json
import subprocess
import types
from collections.abc import Callable

import numpy as np

from bestroute import load_dataset
from bestroute.selection import equivalent, read_answer


def reading_at(rev: str) -> Callable[[str | None, str | None], bool]:
    """Agreement as revision ``rev`` read answers."""
    source = subprocess.run(
        ["git", "show", f"{rev}:src/bestroute/selection/_answers.py"], check=True, capture_output=True, text=True
    ).stdout
    module = types.ModuleType("answers_at_rev")
    exec(compile(source.replace("from .._text import", "from bestroute._text import"), rev, "exec"), module.__dict__)  # noqa: S102 -- our own source, from our own git history

    def agree(a: str | None, b: str | None) -> bool:
        first = module.extract_answer(a)
        return bool(first != "" and first == module.extract_answer(b))

    return agree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--rev", default=None, help="measure this git revision's reading instead")
    parser.add_argument("--models", type=int, default=10, help="most accurate models per task")
    args = parser.parse_args()
    data = load_dataset(args.data)
    agree = reading_at(args.rev) if args.rev else lambda a, b: equivalent(read_answer(a), read_answer(b))
    tasks = np.array([t or "" for t in data.tasks])
    report: dict[str, dict[str, float | int]] = {}
    for task in sorted(set(tasks)):
        rows = np.flatnonzero(tasks == task)
        quality = data.quality[rows, :, 0]
        answered = (~np.isnan(quality)).mean(axis=0) > 0.95
        accuracy = np.where(answered, np.nan_to_num(quality).mean(axis=0), -1.0)
        top = [int(j) for j in np.argsort(-accuracy)[: args.models] if answered[j]]
        agreed = alike = both_right = missed = 0
        for a, b in itertools.combinations(top, 2):
            for i in rows:
                same = agree(data.responses[i, a, 0], data.responses[i, b, 0])
                qa, qb = data.quality[i, a, 0], data.quality[i, b, 0]
                agreed += same
                alike += same and qa == qb
                right = qa == qb == 1
                both_right += right
                missed += right and not same
        report[task] = {
            "pairs_read_as_agreeing": int(agreed),
            "graded_alike": round(float(alike) / max(int(agreed), 1), 4),
            "both_graded_right": int(both_right),
            "read_as_disagreeing": int(missed),
        }
    print(json.dumps({"data": args.data, "reading": args.rev or "by type", "tasks": report}, indent=2))


if __name__ == "__main__":
    main()
