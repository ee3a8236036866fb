"""Split a question into its parts: arithmetic for the calculator, the rest for the corpus.

"What is 17*23 and when was the Eiffel tower built?" has two parts: ``17*23`` and
"when was the Eiffel tower built". Each needs its own evidence, so the scripted planner
calls one tool per part and the scripted critic judges each part on its own.

Arithmetic is found by scanning the question as written for runs of number, operator,
parenthesis and function tokens; operators may be symbols (``*``, ``×``, ``x``, ``^``) or
words ("times", "divided by", "to the power of", ...). Scanning the original text (rather
than rewriting word operators everywhere first) keeps "How many times ..." intact for the
search, and lets each span be cut out of the question exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .tools import STOPWORDS, stem

# Words that say "compute this" or "answer this" but name no fact to look up; searching
# for them only finds passing mentions ("the corpus says nothing about 'much'").
FILLER = frozenset(
    """calculate compute evaluate solve value result results much many equal equals exactly
    corpus bundled say says said know number answer please product sum total""".split()
)

_FUNCS = r"sqrt|abs|round|floor|ceil|log10|log|exp|sin|cos|tan|min|max"
# (token regex, kind, replacement or None to keep the text). Order matters: longer phrases
# first, "% of" before "%".
_TOKENS: list[tuple[str, str, str | None]] = [
    (r"\s+", "space", None),
    (r"\d+(?:,\d{3})+(?:\.\d+)?|\d[\d_]*(?:\.\d+)?|\.\d+", "number", None),
    (r"(?:the\s+)?square\s+root\s+of\b|sqrt\b(?!\s*\()", "prefix", " sqrt "),
    (rf"(?:{_FUNCS})(?=\s*\()", "func", None),
    (r"(?:pi|tau)\b", "number", None),
    (r"squared\b", "postfix", " ** 2 "),
    (r"cubed\b", "postfix", " ** 3 "),
    (r"(?:%|percent)\s*of\b", "op", " / 100 * "),
    (r"multiplied\s+by\b|times\b", "op", " * "),
    (r"divided\s+by\b", "op", " / "),
    (r"plus\b", "op", " + "),
    (r"minus\b", "op", " - "),
    (r"(?:raised\s+)?to\s+the\s+power\s+of\b|raised\s+to\b", "op", " ** "),
    (r"mod(?:ulo)?\b", "op", " % "),
    (r"\*\*|//|[+\-*/%]", "op", None),
    (r"\^", "op", "**"),
    (r"[×·]", "op", "*"),
    (r"x(?=\s*[\d.(])", "x", "*"),  # "17 x 23" or "17x23", never "xylophone" or "3x + 2"
    (r"÷", "op", "/"),
    (r"−", "op", "-"),  # U+2212; an en dash is a range ("1887–1889"), not a minus
    (r"\(", "open", None),
    (r"\)", "close", None),
    (r",", "comma", None),  # only inside parentheses: min(1, 2)
]
_TOKEN = re.compile("|".join(f"(?P<t{i}>{pattern})" for i, (pattern, _, _) in enumerate(_TOKENS)), re.IGNORECASE)

_WORD = re.compile(r"\w+|.", re.DOTALL)
_ARITHMETIC = re.compile(rf"[\d)]\s*(?:\*\*|//|[+\-*/%])\s*[(+\-]*\s*(?:\d|\.\d|pi|tau|sqrt|{_FUNCS})|(?:{_FUNCS})\s*\(\s*[-+(]*\s*\d",
                         re.IGNORECASE)
_DATE = re.compile(r"\d{4}-\d{1,2}-\d{1,2}|\d{1,2}/\d{1,2}/\d{4}")
_YEARS = re.compile(r"(\d{4})-(\d{4})")


def _is_date_or_range(compact: str) -> bool:
    """Digits and dashes that are not subtraction: "2020-05-29", "29/05/2020", "1887-1889"."""
    if _DATE.fullmatch(compact):
        return True
    years = _YEARS.fullmatch(compact)
    return years is not None and int(years.group(1)) < int(years.group(2))


@dataclass(frozen=True)
class Arithmetic:
    """One arithmetic part: the expression for the calculator and where it sits in the question."""

    expression: str
    start: int
    end: int


@dataclass(frozen=True)
class Parts:
    """A question split into its arithmetic parts and the words of the rest."""

    arithmetic: tuple[Arithmetic, ...]
    rest: str  # the question with the arithmetic cut out
    keywords: tuple[tuple[str, str], ...]  # content words of the rest: (as written, stem)
    rest_start: int  # where the first keyword sits in the question (orders the tool calls)


def keywords(text: str) -> list[tuple[str, str]]:
    """Content words of ``text`` as (as written, stem), first occurrence only."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for word in re.findall(r"[A-Za-z0-9]+", text):
        lower = word.lower()
        key = stem(lower)
        if lower not in STOPWORDS and lower not in FILLER and key not in seen:
            seen.add(key)
            out.append((word, key))
    return out


def _tokens(text: str) -> list[tuple[str, str, int, int]]:
    """(kind, normalised text, start, end) for every arithmetic token; other text is kind 'word'."""
    out: list[tuple[str, str, int, int]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            # A whole word at once: "sometimes" must not yield "times", nor "api" yield "pi".
            end = _WORD.match(text, pos).end()  # type: ignore[union-attr]
            out.append(("word", text[pos:end], pos, end))
            pos = end
            continue
        index = int(match.lastgroup[1:])  # type: ignore[index]
        _, kind, replacement = _TOKENS[index]
        out.append((kind, match.group() if replacement is None else replacement, pos, match.end()))
        pos = match.end()
    return out


def _runs(tokens: list[tuple[str, str, int, int]]) -> list[list[tuple[str, str, int, int]]]:
    """Maximal runs of arithmetic tokens; a comma joins a run only inside parentheses."""
    runs: list[list[tuple[str, str, int, int]]] = []
    current: list[tuple[str, str, int, int]] = []
    depth = 0
    for token in tokens:
        kind = token[0]
        if kind == "word" or (kind == "comma" and depth <= 0):
            if current:
                runs.append(current)
            current, depth = [], 0
            continue
        if kind == "x":  # "17 x 23" multiplies; "x + 2" or "Pixel x" is prose
            if not _after_operand(current):
                if current:
                    runs.append(current)
                current, depth = [], 0
                continue
            token = ("op", "*", token[2], token[3])
        depth += kind == "open"
        depth -= kind == "close"
        current.append(token)
    if current:
        runs.append(current)
    return runs


def _after_operand(current: list[tuple[str, str, int, int]]) -> bool:
    last = next((t for t in reversed(current) if t[0] != "space"), None)
    return last is not None and last[0] in ("number", "close", "postfix")


def _trim(run: list[tuple[str, str, int, int]]) -> list[tuple[str, str, int, int]]:
    # Leading binary operators ("HTTP/2" leaves "/2") and trailing ones or open parentheses
    # belong to the prose; a leading minus or plus is a sign and stays.
    while run and (run[0][0] in ("space", "close", "postfix") or (run[0][0] == "op" and run[0][1] not in "+-")):
        run = run[1:]
    while run and run[-1][0] in ("space", "open", "prefix", "func", "op"):
        run = run[:-1]
    return run


def _expression(run: list[tuple[str, str, int, int]]) -> str:
    # Word operators were replaced with spaced symbols; symbols as written keep their spacing.
    text = "".join(" " if kind == "space" else value for kind, value, _, _ in run)
    text = re.sub(r"sqrt\s+(\d[\d.,]*|pi|tau)", r"sqrt(\1)", text)
    return re.sub(r"\s+", " ", text).strip()


def find_arithmetic(question: str) -> list[Arithmetic]:
    """Every arithmetic part of ``question``, in the order written."""
    parts = []
    for run in _runs(_tokens(question)):
        run = _trim(run)
        if not run:
            continue
        expression = _expression(run)
        compact = re.sub(r"\s+", "", expression)
        if not _ARITHMETIC.search(expression) or _is_date_or_range(compact):
            continue
        parts.append(Arithmetic(expression, run[0][2], run[-1][3]))
    return parts


def split_question(question: str) -> Parts:
    """The arithmetic parts of ``question`` and the content words of everything else."""
    arithmetic = find_arithmetic(question)
    rest, cursor = [], 0
    for part in arithmetic:
        rest.append(question[cursor:part.start])
        cursor = part.end
    rest.append(question[cursor:])
    rest_text = " ".join(rest)
    words = keywords(rest_text)
    start = len(question)
    if words:  # the first keyword outside the arithmetic: "2018 * 2, and who won in 2018?"
        spans = [(a.start, a.end) for a in arithmetic]
        for match in re.finditer(rf"\b{re.escape(words[0][0])}\b", question):
            if not any(lo <= match.start() < hi for lo, hi in spans):
                start = match.start()
                break
    return Parts(tuple(arithmetic), rest_text, tuple(words), start)
