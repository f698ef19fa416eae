"""Write the checkable prompts of the local multi-sample set (issue 10, item 6): 610 prompts whose
answers a rule can check, in five tasks, as JSONL for `bestroute collect` (prompt, prompt_id, task,
reference, check). Deterministic: the same file every run.

    python scripts/make_checkable_prompts.py [--out datasets/checkable/prompts.jsonl]

Each task has a plain wording and, for a fifth of its prompts, a variant with one worked example
before the question (a small model follows the format better), so routing can learn from both.
"""

import argparse
import datetime as dt
import json
import random
from collections.abc import Callable
from pathlib import Path

Prompt = dict[str, str]
CITIES = ["Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Quito", "Dakar", "Tbilisi", "Perth", "Porto", "Cusco", "Turin"]
NAMES = ["Maria", "Kenji", "Amara", "Lucas", "Ingrid", "Omar", "Priya", "Tomas", "Zanele", "Yusuf"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
UNITS = [  # (from, to, factor)
    ("meters", "centimeters", 100),
    ("kilometers", "meters", 1000),
    ("kilograms", "grams", 1000),
    ("hours", "minutes", 60),
    ("minutes", "seconds", 60),
    ("liters", "milliliters", 1000),
    ("days", "hours", 24),
]


def arithmetic(rng: random.Random) -> Prompt:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op = rng.choice(["+", "-", "*"])
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return {
        "prompt": f"What is {a} {op} {b}? Answer with the number only.",
        "reference": str(value),
        "check": "numeric",
    }


def dates(rng: random.Random) -> Prompt:
    start = dt.date(2020, 1, 1) + dt.timedelta(days=rng.randint(0, 1500))
    days = rng.randint(1, 40)
    end = start + dt.timedelta(days=days)
    return {
        "prompt": f"What date is {days} days after {start.isoformat()}? Answer in the form YYYY-MM-DD only.",
        "reference": end.isoformat(),
        "check": "contains",
    }


def units(rng: random.Random) -> Prompt:
    source, target, factor = rng.choice(UNITS)
    amount = rng.choice([rng.randint(1, 20), rng.randint(1, 40) / 2])
    value = amount * factor
    shown = f"{amount:g}"
    return {
        "prompt": f"How many {target} are in {shown} {source}? Answer with the number only.",
        "reference": f"{value:g}",
        "check": "numeric",
    }


def extraction(rng: random.Random) -> Prompt:
    name = rng.choice(NAMES)
    origin, destination = rng.sample(CITIES, 2)
    day = rng.choice(WEEKDAYS)
    field, reference = rng.choice(
        [
            ("destination city", destination),
            ("city they left from", origin),
            ("day of the week", day),
            ("name of the traveller", name),
        ]
    )
    return {
        "prompt": f"{name} flew from {origin} to {destination} on {day}. What is the {field}? "
        "Answer with that word only.",
        "reference": reference,
        "check": "exact",
    }


def yes_no(rng: random.Random) -> Prompt:
    kind = rng.choice(["prime", "greater", "even"])
    if kind == "prime":
        n = rng.randint(2, 60)
        answer = all(n % d for d in range(2, int(n**0.5) + 1))
        question = f"Is {n} a prime number?"
    elif kind == "greater":
        a, b = rng.sample(range(1, 200), 2)
        answer, question = a > b, f"Is {a} greater than {b}?"
    else:
        n = rng.randint(1, 999)
        answer, question = n % 2 == 0, f"Is {n} an even number?"
    return {"prompt": f"{question} Answer yes or no.", "reference": "yes" if answer else "no", "check": "yesno"}


TASKS: dict[str, tuple[Callable[[random.Random], Prompt], int]] = {
    "arithmetic": (arithmetic, 150),
    "dates": (dates, 100),
    "units": (units, 120),
    "extraction": (extraction, 120),
    "yes-no": (yes_no, 120),
}


def prompts(seed: int = 0) -> list[Prompt]:
    rng = random.Random(seed)
    rows: list[Prompt] = []
    for task, (make, count) in TASKS.items():
        example = make(rng)  # one worked example per task, for the variants
        shown = f"Example: {example['prompt']}\nAnswer: {example['reference']}\n\n"
        seen: set[str] = {example["prompt"]}
        while sum(r["task"] == task for r in rows) < count:
            row = make(rng)
            if row["prompt"] in seen:
                continue
            seen.add(row["prompt"])
            number = sum(r["task"] == task for r in rows)
            variant = number % 5 == 4
            rows.append(
                row
                | {
                    "task": task,
                    "prompt_id": f"{task}-{number:03d}",
                    "prompt": shown + row["prompt"] if variant else row["prompt"],
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("datasets/checkable/prompts.jsonl"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = prompts()
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} prompts to {args.out}")


if __name__ == "__main__":
    main()
