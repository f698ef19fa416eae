"""Answer equivalence: the final answer of a response, read by its type, and whether two answers
say the same thing.

:func:`read_answer` finds where a response states its final answer (a JSON ``answer`` field, the
gateway's text of tool calls, ``\\boxed{}``, ``####``, "the answer is"/"final answer"/"Answer:"/
"A:", else the last line, else the last number, date or fraction in the text) and parses it by
type: a number (currency, thousands separators, percent, units, fractions, number words, a
closed form such as ``2^{10}`` or ``\\frac{\\sqrt{3}}{2}``), a date, a multiple-choice letter
(with or without its text), a boolean, a Python or JSON literal, or free text; an equation's
right-hand side (``x = 5``, ``3 + 4 = 7``) is the answer it states. :func:`equivalent` compares
two answers by type: numbers within a relative tolerance, dates and letters normalised, literals
by equality, free text normalised; across types, only a quoted string and the same thing
unquoted agree. An empty or unparsable answer agrees with nothing, so
samples that say nothing never look confident.

Every selector that votes on answers, every reference check and the decision log's export read
answers here; nothing here raises on any text.
"""

import ast
import calendar
import datetime
import json
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal, get_args

from pydantic import Field, field_validator

from .._section import Section
from .._text import json_object

AnswerType = Literal["auto", "number", "date", "choice", "boolean", "literal", "text"]
ANSWER_TYPES: tuple[str, ...] = get_args(AnswerType)
AnswerKind = Literal["empty", "unparsed", "number", "date", "choice", "boolean", "literal", "text", "tool_calls"]

# Parsing is bounded: a span longer than these is not a typed answer (a literal may be long).
_MAX_SPAN = 2_000
_MAX_LITERAL = 20_000
_NOT_READ = object()  # what a reader returns for text that is not of its type (None is a literal)


class AnswerSpec(Section):
    """How the answers of a task (or a gateway route) are read: their ``type`` (``auto`` tries each
    in turn) and, optionally, a regular expression whose last match is the answer (its first
    group, if it has one)."""

    type: AnswerType = "auto"
    pattern: str | None = Field(default=None, description="regex: its last match (group 1 if any) is the answer")
    rel_tol: float = Field(default=1e-6, ge=0, le=1, description="numbers within this relative tolerance agree")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"answer pattern {pattern!r} is not a regular expression: {exc}") from None
        return pattern


AUTO = AnswerSpec()


@dataclass(frozen=True)
class Answer:
    """A response's final answer: its ``kind``, its normalised ``value`` (a float for a number,
    a ``datetime.date``, an upper-case letter, a bool, the Python object of a literal, the
    normalised text, the canonical JSON of tool calls; None when empty or unparsed) and the
    ``text`` it was read from."""

    kind: AnswerKind
    value: Any
    text: str

    @property
    def key(self) -> str:
        """The answer as one normalised string (the decision log's and reports' form)."""
        if self.kind == "number":
            value = float(self.value)
            return repr(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)
        if self.kind == "date":
            return self.value.isoformat()
        if self.kind in ("choice", "text", "tool_calls"):
            return str(self.value)
        if self.kind == "boolean":
            return "true" if self.value else "false"
        if self.kind == "literal":
            return repr(self.value)
        return ""


def read_answer(response: str | None, spec: AnswerSpec = AUTO) -> Answer:
    """The final answer of ``response``, read as ``spec`` says; never raises."""
    if not response or not response.strip():
        return Answer("empty", None, "")
    text = response.strip()
    if spec.pattern is not None:
        matches = list(re.finditer(spec.pattern, text, flags=re.IGNORECASE | re.MULTILINE))
        if not matches:
            return Answer("empty", None, "")
        last = matches[-1]
        span = last.group(1) if last.re.groups else last.group(0)
        return _parse(span or "", spec.type)
    calls = _tool_calls(text)
    if calls is not None:
        return Answer("tool_calls", calls, calls)
    span = _marked_span(text)
    if isinstance(span, _Stated):  # a JSON answer field that is blank: the answer is that string
        return Answer("literal", span.value, span.value) if spec.type in ("auto", "literal") else _parse("", spec.type)
    if span is not None:
        answer = _parse(span, spec.type)
        if answer.kind == "text" and spec.type == "auto" and _PROSE.match(span):
            # "The answer is: the trip took 6 hours": the sentence's number, read from the whole
            # sentence (a quoted string is compared with all of it, not with the number)
            said = _sentence(span, spec, span)
            return Answer(said.kind, said.value, span)
        return answer
    lines = [line for line in text.splitlines() if not _DECORATION.fullmatch(line)]
    return _sentence(lines[-1], spec, text) if lines else Answer("empty", None, "")


def _sentence(sentence: str, spec: AnswerSpec, context: str) -> Answer:
    """``sentence`` read as an answer; where it is free text (and ``spec`` does not ask for
    text), what it says something is, else the last number, date or fraction in ``context``."""
    answer = _parse(sentence, spec.type)
    if answer.kind not in ("text", "unparsed", "empty") or spec.type == "text":
        return answer
    said = _STATED.search(sentence[-_MAX_SPAN:])
    if said is not None:  # "The result is [1, 2, 3]": what the sentence says it is
        stated = _parse(said.group(1), spec.type)
        if stated.kind not in ("text", "unparsed", "empty"):
            return stated
    token = _last_token(context, spec.type)
    if token is not None:
        parsed = _parse(token, spec.type)
        if parsed.kind not in ("unparsed", "empty"):
            return parsed
    return answer


def equivalent(a: Answer, b: Answer, *, rel_tol: float = AUTO.rel_tol) -> bool:
    """Whether two answers say the same thing (see the module's docstring)."""
    if a.kind in ("empty", "unparsed") or b.kind in ("empty", "unparsed"):
        return False
    quoted = [x for x in (a, b) if x.kind == "literal" and isinstance(x.value, str)]
    if len(quoted) == 1:
        # A quoted string and the same thing written unquoted agree ('816' and 816, 'abc' and
        # abc, '6,8' and 6,8), as graders of literal answers (CRUXEval's) count them.
        # The quoted string is exact ('yes ' keeps its space); the unquoted one is trimmed.
        # Markup around the unquoted one is taken off, unless the string is the text as written
        # ('try.' and try., '*ab' and *ab).
        other = b if quoted[0] is a else a
        return bool(quoted[0].value in (_unwrap(other.text), other.text.strip()))
    if a.kind != b.kind:
        return False
    if a.kind == "number":
        return math.isclose(a.value, b.value, rel_tol=rel_tol, abs_tol=1e-12)
    try:
        return bool(a.value == b.value)
    except Exception:  # noqa: BLE001 -- a literal's __eq__ is the builtins', but never trust it to be total
        return False


def extract_answer(response: str | None, spec: AnswerSpec = AUTO) -> str:
    """The final answer of a response as one normalised string (:attr:`Answer.key`)."""
    return read_answer(response, spec).key


_TOOL_CALLS = '{"tool_calls":'
# A sentence in words: at least three of them (so "23x John z" is a string, not a sentence).
_PROSE = re.compile(r"(?:.*?(?<![\\A-Za-z])[A-Za-z]{2,}\b){3}", flags=re.DOTALL)  # LaTeX commands are no words
# What a sentence says something is: the text after its last " is ", ":" or "=".
_STATED = re.compile(r"(?:\bis\b|:|=)\s*([^:=]{1,2000}?)\s*$")
# Lines that hold no answer: blank, code fences, rules.
_DECORATION = re.compile(r"\s*(?:```\w*|[-=*_#~]{3,})?\s*")


def _tool_calls(text: str) -> str | None:
    """The canonical JSON of the gateway's text of a tool-call answer (its last line)."""
    start = text.rfind(_TOOL_CALLS)
    if start < 0:
        return None
    try:
        parsed = json.loads(text[start:])
    except (ValueError, RecursionError):
        return None
    if not isinstance(parsed, dict) or list(parsed) != ["tool_calls"]:
        return None
    return json.dumps(parsed["tool_calls"], sort_keys=True, ensure_ascii=False)


_JSON_ANSWER = re.compile(r'"answer"\s*:\s*("(?:[^"\\\n]|\\.)*"|[^,}\n]+)')
_MARKER = re.compile(
    r"(?:####|\bfinal answer\b(?:\s*(?:is|:))?|\bthe answer is\b|\banswer is\b|\banswer\s*:|^\s*a\s*:)[ \t:]*",
    flags=re.IGNORECASE | re.MULTILINE,
)


@dataclass(frozen=True)
class _Stated:
    """A JSON answer field's string kept exactly as written: blank (``""``, spaces), which as
    a span would read as saying nothing, where it says the answer is that string."""

    value: str


def _marked_span(text: str) -> str | _Stated | None:
    """The answer a response marks as its answer, or None if it marks none."""
    parsed = json_object(text)
    if parsed is not None and "answer" in parsed:
        value = parsed["answer"]
        if isinstance(value, str) and not value.strip():
            return _Stated(value)
        return value if isinstance(value, str) else json.dumps(value)
    field = None
    for field in _JSON_ANSWER.finditer(text):
        pass
    if field is not None:  # a JSON answer field in JSON that does not parse
        raw = field.group(1).strip()
        try:
            return str(json.loads(raw)) if raw.startswith('"') else raw
        except ValueError:
            return raw.strip('"')
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    marker = None
    for marker in _MARKER.finditer(text):
        pass
    if marker is None:
        return None
    rest = text[marker.end() :].split("\n", 1)[0]
    boxed = _last_boxed(rest)
    return boxed if boxed is not None else re.split(r"(?<=[^\d\s])\.\s|\.\s+(?=[A-Z])", rest, maxsplit=1)[0]


def _last_boxed(text: str) -> str | None:
    """The contents of the last ``\\boxed{...}`` (braces balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for end in range(begin, min(len(text), begin + _MAX_SPAN)):
        if text[end] == "{":
            depth += 1
        elif text[end] == "}":
            if depth == 0:
                return text[begin:end]
            depth -= 1
    return None


_MONTHS = {name.lower(): number for number, name in enumerate(calendar.month_name) if name} | {
    name.lower(): number for number, name in enumerate(calendar.month_abbr) if name
}
_MONTH = r"(?:" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_DATE_TOKEN = (
    r"\d{4}-\d{1,2}-\d{1,2}|\d{1,2}/\d{1,2}/\d{2,4}"
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH},?\s+\d{{4}}|{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}"
)
# Digits with or without thousands separators: one pattern for finding numbers and for reading them.
_DIGITS = r"(?:\d{1,3}(?:,\d{3})+|\d+)"
_NUMBER_TOKEN = rf"-?[$€£¥]?\s?-?{_DIGITS}(?:\.\d+)?(?:[eE][-+]?\d+)?%?"
_TOKEN = re.compile(rf"(?<![\w.])(?:{_DATE_TOKEN}|-?\d+\s*/\s*\d+(?![\d/])|{_NUMBER_TOKEN})", flags=re.IGNORECASE)


def _last_token(text: str, kind: AnswerType) -> str | None:
    """The last choice (for ``kind`` choice), else number, date or fraction written in ``text``."""
    last = None
    for last in (_CHOICE_TOKEN if kind == "choice" else _TOKEN).finditer(text[-_MAX_LITERAL:]):
        pass
    return last.group(0) if last is not None else None


def _parse(span: str, kind: AnswerType) -> Answer:
    """``span`` read as an answer of type ``kind`` (``auto``: the first type it parses as)."""
    text = _unwrap(span)
    if not text:
        return Answer("empty", None, span)
    if len(text) > _MAX_LITERAL:
        return Answer("text", _normal_text(text), span) if kind in ("auto", "text") else Answer("unparsed", None, span)
    for answer_kind, reader in _READERS:
        if kind not in ("auto", answer_kind) or (answer_kind != "literal" and len(text) > _MAX_SPAN):
            continue
        value = reader(text)
        if value is not _NOT_READ:
            if answer_kind == "literal" and isinstance(value, float) and not math.isfinite(value):
                continue  # JSON's NaN and Infinity: no number equals NaN, so it is read as text
            if answer_kind == "literal" and isinstance(value, int | float) and not isinstance(value, bool):
                try:
                    return Answer("number", float(value), span)
                except OverflowError:  # an integer beyond floats: compared exactly, as a literal
                    pass
            return Answer(answer_kind, value, span)
    stated = _EQUATION.fullmatch(text) if len(text) <= _MAX_SPAN else None
    if stated is not None:  # "x = 5", "3 + 4 = 7": the value the equation ends in, if it is typed
        value = _parse(stated.group(1), kind)
        if value.kind not in ("text", "unparsed", "empty"):
            return Answer(value.kind, value.value, span)
    if kind in ("auto", "text"):  # punctuation alone ("!?") is compared as written
        return Answer("text", _normal_text(text) or text, span)
    return Answer("unparsed", None, span)


def _unwrap(span: str) -> str:
    """The answer without the markup around it: markdown emphasis and code, LaTeX math and
    ``\\text{}``, a closing full stop."""
    text = span.strip()
    for _ in range(3):
        before = text
        text = text.strip("*` ")
        text = re.sub(
            r"^(\*\*|\*|__|`{1,3}|\$\$?|\\\(|\\\[)(.*?)(\*\*|\*|__|`{1,3}|\$\$?|\\\)|\\\])$",
            r"\2",
            text,
            flags=re.DOTALL,
        )
        text = re.sub(r"^\\text(?:bf)?\{(.*)\}$", r"\1", text, flags=re.DOTALL).strip()
        text = text.rstrip(".;,").strip() or text  # "." alone is an answer, not a closing stop
        if text == before:
            break
    return text


def _boolean(text: str) -> Any:
    word = text.lower().rstrip("!").strip()
    return {"yes": True, "true": True, "no": False, "false": False}.get(word, _NOT_READ)


_CHOICE = re.compile(r"^(?:(?i:option|choice)\s+)?(?:\(([A-Ja-j])\)|([A-J])(?:[.:)]|$))(?:\s+.*)?$", flags=re.DOTALL)
# A letter written as a choice inside a sentence: "(B)", "B)", "B." before a space.
_CHOICE_TOKEN = re.compile(r"\(([A-Ja-j])\)|\b([A-J])(?:\)|\.(?=\s|$))")


def _choice(text: str) -> Any:
    found = _CHOICE.match(text)
    if found is None:
        return _NOT_READ
    return (found.group(1) or found.group(2)).upper()


def _date(text: str) -> Any:
    text = re.sub(r"(\d)(st|nd|rd|th)\b", r"\1", text.strip(), flags=re.IGNORECASE)
    try:
        if found := re.fullmatch(r"(\d{4})-(\d{1,2})-(\d{1,2})", text):
            year, month, day = (int(g) for g in found.groups())
        elif found := re.fullmatch(r"(\d{1,2})/(\d{1,2})/(\d{2}|\d{4})", text):
            first, second, year = (int(g) for g in found.groups())
            year += 2000 if year < 100 else 0
            month, day = (first, second) if first <= 12 else (second, first)  # US order unless it cannot be
        elif found := re.fullmatch(rf"(\d{{1,2}})\s+({_MONTH}),?\s+(\d{{4}})", text, flags=re.IGNORECASE):
            day, month, year = int(found.group(1)), _MONTHS[found.group(2).lower().rstrip(".")], int(found.group(3))
        elif found := re.fullmatch(rf"({_MONTH})\s+(\d{{1,2}}),?\s+(\d{{4}})", text, flags=re.IGNORECASE):
            month, day, year = _MONTHS[found.group(1).lower().rstrip(".")], int(found.group(2)), int(found.group(3))
        else:
            return _NOT_READ
        return datetime.date(year, month, day)
    except ValueError:  # no such day
        return _NOT_READ


_NUMBER = re.compile(
    r"^(?P<sign>[-+−]?)\s*(?P<currency>[$€£¥])?\s*(?P<sign2>[-+−]?)"
    rf"(?P<digits>{_DIGITS}(?:\.\d*)?|\.\d+)(?P<exp>[eE][-+]?\d+)?"
    # Units: words without digits, up to five ("km", "square feet"); written without a space,
    # at most three letters ("5km"), so "234abcdef" is not the number 234; a currency sign
    # after the digits ("350$"), inches and feet (67").
    r"\s*(?P<percent>%|percent\b)?(?P<unit>[^\W\d_]{1,3}|\s+[^\W\d_]+(?:[ /.'-]+[^\W\d_]+){0,4}|\s*[°²³][^\W\d_]*"
    r"|\s?[$€£¥]|[\"″′'])?[.]?$"
)
_FRACTION = re.compile(r"^([-+]?\d+)\s*/\s*(\d+)$|^\\d?frac\{(-?\d+)\}\{(\d+)\}$")


def _number(text: str) -> Any:
    if found := _FRACTION.match(text):
        numerator, denominator = (
            (found.group(1), found.group(2)) if found.group(1) else (found.group(3), found.group(4))
        )
        return float(Fraction(int(numerator), int(denominator))) if int(denominator) else _NOT_READ
    found = _NUMBER.match(text)
    if found is None:
        return _NOT_READ
    try:
        value = float(found["digits"].replace(",", "") + (found["exp"] or ""))
    except (ValueError, OverflowError):
        return _NOT_READ
    if not math.isfinite(value):  # beyond floats: the literal reader compares the integer exactly
        return _NOT_READ
    negative = (found["sign"] + found["sign2"]).count("-") + (found["sign"] + found["sign2"]).count("−")
    return -value if negative % 2 else value


def _literal(text: str) -> Any:
    """The Python (or JSON) literal ``text`` writes, or ``_NOT_READ``."""
    for parse in (ast.literal_eval, json.loads):
        try:
            with warnings.catch_warnings():  # "invalid escape sequence" in a model's string is its own business
                warnings.simplefilter("ignore")
                return parse(text)
        except Exception:  # noqa: BLE001, S112 -- SyntaxError, ValueError, MemoryError, RecursionError: not one
            continue
    return _NOT_READ


# An equation: the answer is what its last "=" (not "==", "<=", ">=" or "!=") says.
_EQUATION = re.compile(r".*[^=<>!]=\s*([^=]+)", flags=re.DOTALL)

# LaTeX of a closed form, rewritten as Python arithmetic: (pattern, replacement), in order.
_LATEX = [
    (re.compile(r"\\left|\\right|\\[,;:! ]|\$"), ""),
    (re.compile(r"\\[dt]frac"), r"\\frac"),
    (re.compile(r"\\(?:cdot|times)"), "*"),
    (re.compile(r"\\div"), "/"),
    (re.compile(r"\\pi|π"), " pi "),
    (re.compile(r"√"), r"\\sqrt"),
    (re.compile(r"\\(frac|sqrt)\s*(\w)(?![\w{])"), r"\\\1{\2}"),  # \sqrt 2, \sqrt2
    (re.compile(r"\\frac\s*(\d)(\d)"), r"\\frac{\1}{\2}"),  # \frac12
]
_INNER_FRAC = re.compile(r"\\frac\{([^{}]*)\}\{([^{}]*)\}")
_INNER_SQRT = re.compile(r"\\sqrt\{([^{}]*)\}")
_ARITHMETIC = re.compile(r"[\d\s.+\-*/()]*(?:(?:sqrt|pi)[\d\s.+\-*/()]*)*")
_OPERATORS: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: float.__add__,
    ast.Sub: float.__sub__,
    ast.Mult: float.__mul__,
    ast.Div: float.__truediv__,
    ast.Pow: math.pow,
}


def _expression(text: str) -> Any:
    """The value of a closed form written in plain arithmetic or LaTeX (``2^{10}``, ``3\\sqrt{2}``,
    ``\\frac{\\pi}{4}``, ``(1+2)*3``): numbers, + - * / and powers, square roots and pi."""
    if len(text) > 200 or not re.search(r"[+*/^()\\√π]|\d\s*-", text):
        return _NOT_READ  # a plain number is the number reader's; so is a fraction a/b
    expression = text.lower().replace("{,}", "").replace("−", "-")
    for pattern, replacement in _LATEX:
        expression = pattern.sub(replacement, expression)
    for _ in range(len(expression)):  # innermost first: \frac{\sqrt{3}}{2}
        before = expression
        expression = _INNER_SQRT.sub(r"sqrt(\1)", _INNER_FRAC.sub(r"((\1)/(\2))", expression))
        if expression == before:
            break
    expression = expression.replace("{", "(").replace("}", ")").replace("^", "**")
    expression = re.sub(r"(?<=[\d)])\s*(?=\(|sqrt|pi)|(?<=pi)\s*(?=[\d(]|sqrt|pi)", "*", expression)
    if not _ARITHMETIC.fullmatch(expression):
        return _NOT_READ
    try:
        value = _evaluate(ast.parse(expression.strip(), mode="eval").body)
    except Exception:  # noqa: BLE001 -- SyntaxError, ZeroDivisionError, OverflowError, ValueError: not one
        return _NOT_READ
    return value if math.isfinite(value) else _NOT_READ


def _evaluate(node: ast.AST) -> float:
    """The value of an arithmetic expression tree of :func:`_expression`'s form (ValueError for others)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.Name) and node.id == "pi":
        return math.pi
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = _evaluate(node.operand)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return float(_OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right)))
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "sqrt"
        and len(node.args) == 1
    ):
        return math.sqrt(_evaluate(node.args[0]))
    raise ValueError("not arithmetic")


_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
}  # fmt: skip
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}
_WORD = r"(?:" + "|".join([*_UNITS, *_SCALES]) + r")"
_WORDS = re.compile(
    rf"(?P<sign>minus\s+|negative\s+)?(?P<words>(?:an?\s+)?{_WORD}(?:(?:\s+and\s+|[\s-]+){_WORD})*)"
    r"(?P<unit>\s+[^\W\d_]+(?:[ /.'-]+[^\W\d_]+){0,4})?[.]?",
    flags=re.IGNORECASE,
)


def _words(text: str) -> Any:
    """A number written in English words (``five``, ``twenty-one``, ``two hundred and five
    apples``), units after it allowed as after digits."""
    found = _WORDS.fullmatch(text) if len(text) <= 200 else None
    if found is None:
        return _NOT_READ
    total, group = 0, 0
    for word in re.split(r"[\s-]+", found["words"].lower()):
        if word in ("a", "an", "and"):
            group = group if word == "and" else 1
        elif word in _UNITS:
            group += _UNITS[word]
        elif word == "hundred":
            group = max(group, 1) * 100
        else:
            total, group = total + max(group, 1) * _SCALES[word], 0
    value = float(total + group)
    return -value if found["sign"] else value


_READERS: list[tuple[AnswerKind, Any]] = [
    ("boolean", _boolean),
    ("choice", _choice),
    ("date", _date),
    ("number", _number),
    ("number", _words),
    ("literal", _literal),
    ("number", _expression),
]


def _normal_text(text: str) -> str:
    """Free text compared as written, give or take quotes and punctuation around it and the case
    of a word's first letter (Paris and paris, as prose writes them); case inside a word counts,
    as does the spacing (outputs of code differ by them: mJkLbn is not mJklbn)."""
    text = text.strip().strip(".!?;:,\"'`").strip()
    return _CAPITAL.sub(lambda found: found[0].lower(), text)


_CAPITAL = re.compile(r"\b[A-Z](?![A-Z])")  # a capital that starts a word the rest of which is not capitals
