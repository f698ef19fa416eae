"""Write the checkable prompts of the local multi-sample set (issue 10, item 6): 610 prompts whose
answers a rule can check, in five tasks, as JSONL for `bestroute collect` (prompt, prompt_id, task,
reference, check, and for people: answer, wording). Deterministic: the same file every run.

    python scripts/make_checkable_prompts.py [--out datasets/checkable/prompts.jsonl]

The tasks are pitched at what 135M-270M models can sometimes do (single-digit sums, the weekday
after a weekday, one-step unit facts), so that best-of-n and escalation have room to show. Each
task has three wordings: the plain question with an instruction on the answer's form (two in five
prompts), the bare question in a "Q: ... A:" layout (one in five), and the same after three worked
examples (two in five; a base model follows that format better), so routing can learn which
wording a model needs. Numbers are checked as the response's final number ("exact"), so a
response that works the sum out first ("9 + 9 = 18") counts.
"""

import argparse
import json
import random
import re
from collections.abc import Callable
from pathlib import Path

Prompt = dict[str, str]
CITIES = ["Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Quito", "Dakar", "Tbilisi", "Perth", "Porto", "Cusco", "Turin"]
NAMES = ["Maria", "Kenji", "Amara", "Lucas", "Ingrid", "Omar", "Priya", "Tomas", "Zanele", "Yusuf"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]  # fmt: skip
UNITS = [  # (unit, its plural, what it converts to, factor)
    ("hour", "hours", "minutes", 60),
    ("minute", "minutes", "seconds", 60),
    ("meter", "meters", "centimeters", 100),
    ("kilogram", "kilograms", "grams", 1000),
    ("kilometer", "kilometers", "meters", 1000),
    ("day", "days", "hours", 24),
    ("week", "weeks", "days", 7),
    ("year", "years", "months", 12),
    ("dozen", "dozens", "eggs", 12),
    ("liter", "liters", "milliliters", 1000),
    ("century", "centuries", "years", 100),
    ("foot", "feet", "inches", 12),
]


def only(answer: str, among: list[str], allowed: tuple[str, ...] = ()) -> str:
    """A regex check: the response names ``answer`` and no other word of ``among`` (bar ``allowed``).
    A response that repeats the question names them all, or (``allowed``) is refused by them."""
    others = [w for w in among if w != answer and w not in allowed]
    return rf"(?si)^(?!.*\b(?:{'|'.join(map(re.escape, others))})\b).*\b{re.escape(answer)}\b"


def first_yes_no(answer: str) -> str:
    """A regex check: the first yes/no word of the response is ``answer``, and the response does not
    repeat the instruction "yes or no" (which would name both)."""
    return rf"(?si)^(?!.*\byes or no\b)(?:(?!\b(?:yes|no)\b).)*\b{answer}\b"


def arithmetic(rng: random.Random) -> Prompt:
    kind = rng.choices(["+", "-", "*"], weights=[6, 3, 1])[0]
    if kind == "+":
        a, b = rng.randint(1, 9), rng.randint(1, 9)
    elif kind == "-":
        a = rng.randint(2, 9)
        b = rng.randint(1, a - 1)
    else:
        a, b = rng.randint(2, 5), rng.randint(2, 5)
    value = {"+": a + b, "-": a - b, "*": a * b}[kind]
    return {"prompt": f"What is {a} {kind} {b}?", "reference": str(value), "check": "exact"}


def dates(rng: random.Random) -> Prompt:
    names, unit = rng.choice([(WEEKDAYS, "day of the week"), (MONTHS, "month")])
    index = rng.randrange(len(names))
    step = rng.choice([1, 1, -1, 2, -2])
    answer = names[(index + step) % len(names)]
    if abs(step) == 2:
        steps = "two days" if names is WEEKDAYS else "two months"
        question = f"Which {unit} is {steps} {'after' if step > 0 else 'before'} {names[index]}?"
    else:
        question = f"Which {unit} comes right {'after' if step == 1 else 'before'} {names[index]}?"
    return {"prompt": question, "reference": only(answer, names, allowed=(names[index],)), "answer": answer,
            "check": "regex"}  # fmt: skip


def units(rng: random.Random) -> Prompt:
    unit, plural, target, factor = rng.choice(UNITS)
    amount = rng.choice([1, 1, 2, 3, 4, 5, 6, 10])
    shown = f"1 {unit}" if amount == 1 else f"{amount} {plural}"
    return {"prompt": f"How many {target} are in {shown}?", "reference": str(amount * factor), "check": "exact"}


def extraction(rng: random.Random) -> Prompt:
    name = rng.choice(NAMES)
    origin, destination = rng.sample(CITIES, 2)
    day = rng.choice(WEEKDAYS)
    field, answer, among = rng.choice(
        [
            ("Which city did they fly to", destination, CITIES),
            ("Which city did they leave from", origin, CITIES),
            ("On which day did they fly", day, WEEKDAYS),
            ("Who flew", name, NAMES),
        ]
    )
    return {
        "prompt": f"{name} flew from {origin} to {destination} on {day}. {field}?",
        "reference": only(answer, among + ["flew"]),  # the sentence repeated is no answer
        "answer": answer,
        "check": "regex",
    }


def yes_no(rng: random.Random) -> Prompt:
    kind = rng.choice(["greater", "smaller", "even"])
    if kind == "even":
        n = rng.randint(1, 20)
        answer, question = n % 2 == 0, f"Is {n} an even number?"
    else:
        a, b = rng.sample(range(1, 21), 2)
        answer = a > b if kind == "greater" else a < b
        question = f"Is {a} {kind} than {b}?"
    word = "yes" if answer else "no"
    return {"prompt": question, "reference": first_yes_no(word), "answer": word, "check": "regex"}


TASKS: dict[str, tuple[Callable[[random.Random], Prompt], int, str]] = {
    "arithmetic": (arithmetic, 150, "Answer with the number only."),
    "dates": (dates, 100, "Answer with one word."),
    "units": (units, 120, "Answer with the number only."),
    "extraction": (extraction, 120, "Answer with one word."),
    "yes-no": (yes_no, 120, "Answer yes or no."),
}


def _shown(row: Prompt) -> str:
    return row.get("answer", row["reference"])


def prompts(seed: int = 0) -> list[Prompt]:
    rng = random.Random(seed)
    rows: list[Prompt] = []
    for task, (make, count, instruction) in TASKS.items():
        examples = [make(rng) for _ in range(3)]  # worked examples, the same for every prompt of the task
        few_shot = "".join(f"Q: {e['prompt']}\nA: {_shown(e)}\n\n" for e in examples)
        seen: set[str] = set()
        number = tries = 0
        while number < count:
            row, tries = make(rng), tries + 1
            if tries > 100 * count:
                raise SystemExit(f"task {task}: too few distinct questions for {count} prompts")
            wording = ("plain", "few-shot", "qa", "plain", "few-shot")[number % 5]
            text = {
                "plain": f"{row['prompt']} {instruction}",
                "qa": f"Q: {row['prompt']}\nA:",
                "few-shot": few_shot + f"Q: {row['prompt']}\nA:",
            }[wording]
            if text in seen or row["prompt"] in {e["prompt"] for e in examples}:
                continue
            seen.add(text)
            rows.append(
                row
                | {
                    "answer": _shown(row),
                    "task": task,
                    "prompt_id": f"{task}-{number:03d}",
                    "prompt": text,
                    "wording": wording,
                }
            )
            number += 1
    rng.shuffle(rows)  # a collection cut short still covers every task and wording
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
