"""Real tools for the built-in agent: a safe calculator and a search over a bundled corpus.

Both are plain synchronous functions (CPU-bound); callers inside the event loop run them
through ``asyncio.to_thread``. LangChain wrappers exist only so a chat model can be told
about them with ``bind_tools``.
"""

from __future__ import annotations

import ast
import functools
import json
import logging
import math
import operator
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, Field, ValidationError

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------- calculator

MAX_EXPRESSION_CHARS = 500
# Big enough for any honest question, small enough that no single operation (and no
# int -> str conversion, which Python caps at 4300 digits) can stall the process.
MAX_INT_BITS = 4096

_BIN_OPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY_OPS: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt, "abs": abs, "round": round, "min": min, "max": max,
    "floor": math.floor, "ceil": math.ceil, "log": math.log, "log10": math.log10,
    "exp": math.exp, "sin": math.sin, "cos": math.cos, "tan": math.tan,
}
_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _check_size(value: Any) -> Any:
    if isinstance(value, complex):
        raise ValueError("result is not a real number")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ValueError("result is too large")
    return value


def _power(base: Any, exponent: Any) -> Any:
    # Estimate before computing: 9**9**9 must be refused, not attempted.
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if exponent > MAX_INT_BITS or base.bit_length() * exponent > MAX_INT_BITS + 64:
            raise ValueError("result is too large")
    return base**exponent


def _evaluate(node: ast.AST) -> Any:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ValueError(f"only numbers are allowed, not {node.value!r}")
        return node.value
    if isinstance(node, ast.BinOp):
        op = _BIN_OPS.get(type(node.op))
        if op is None:
            hint = "; use ** for powers" if isinstance(node.op, ast.BitXor) else ""
            raise ValueError(f"operator {type(node.op).__name__} is not allowed{hint}")
        left, right = _evaluate(node.left), _evaluate(node.right)
        if op is operator.pow:
            return _check_size(_power(left, right))
        if op is operator.mul and isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
                raise ValueError("result is too large")
        return _check_size(op(left, right))
    if isinstance(node, ast.UnaryOp):
        uop = _UNARY_OPS.get(type(node.op))
        if uop is None:
            raise ValueError(f"operator {type(node.op).__name__} is not allowed")
        return uop(_evaluate(node.operand))
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise ValueError(f"unknown name {node.id!r}")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            raise ValueError(f"function {ast.unparse(node.func)!r} is not allowed")
        if node.keywords:
            raise ValueError("keyword arguments are not allowed")
        args = [_evaluate(arg) for arg in node.args]
        if node.func.id == "round" and len(args) > 1 and abs(args[1]) > 100:
            raise ValueError("round() precision is too large")
        try:
            return _check_size(_FUNCTIONS[node.func.id](*args))
        except TypeError as exc:
            raise ValueError(f"bad arguments for {node.func.id}(): {exc}") from None
    raise ValueError(f"{type(node).__name__} is not allowed in an arithmetic expression")


def _format_number(value: int | float) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise ValueError("result is not a finite number")
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return format(value, ".12g")
    return str(value)


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as ``17 * 23 + 4`` or ``sqrt(2) / 3``.

    Supports numbers, + - * / // % **, parentheses, the constants pi, e, tau and the
    functions sqrt, abs, round, min, max, floor, ceil, log, log10, exp, sin, cos, tan.
    Raises ValueError for anything else.
    """
    text = expression.strip()
    if not text:
        raise ValueError("empty expression")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise ValueError(f"not a valid arithmetic expression: {text!r}") from None
    try:
        return _format_number(_evaluate(tree))
    except ZeroDivisionError:
        raise ValueError("division by zero") from None
    except OverflowError:
        raise ValueError("result is too large") from None
    except RecursionError:
        raise ValueError("expression is nested too deeply") from None


# ---------------------------------------------------------------- corpus search

STOPWORDS = frozenset(
    """a about above after again all also am an and any are as at be been before being
    between both but by can compare could describe did difference differences do
    does doing done during each explain for from get gets give got had happen
    happens has have having how i if in into is it its itself just made make makes
    me mean means more most my no nor not of on once only or other our out over own
    please same she should so some such tell than that the their them then there
    these they this those through to too under until up versus very vs was we were
    what whats when where which while who whom why will with work works would you
    your""".split()
)


def stem(word: str) -> str:
    """A deliberately tiny stemmer: plurals and a past tense, so 'streams' finds 'stream' and
    'walk' finds 'walked' ("when did astronauts walk on the Moon?"). A final e goes too, so
    'release' and 'released' meet at 'releas'. Query and corpus share it, so odd stems are fine."""
    if len(word) > 4 and word.endswith("ies"):
        word = word[:-3] + "y"
    elif len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    if len(word) > 5 and word.endswith("ed") and not word.endswith("eed"):
        word = word[:-2]
    if len(word) > 4 and word.endswith("e") and not word.endswith("ee"):
        word = word[:-1]
    return word


def tokenize(text: str) -> list[str]:
    """Lower-cased, stemmed content words of ``text`` (stopwords dropped)."""
    return [stem(w) for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOPWORDS]


@dataclass(frozen=True)
class _Doc:
    id: str
    title: str
    text: str
    sentences: tuple[str, ...]
    terms: Counter[str]
    length: int


@dataclass(frozen=True)
class _Index:
    docs: tuple[_Doc, ...]
    doc_freq: Mapping[str, int]
    avg_length: float

    def idf(self, term: str) -> float:
        n, df = len(self.docs), self.doc_freq.get(term, 0)
        return math.log(1 + (n - df + 0.5) / (df + 0.5))


@functools.cache
def _index() -> _Index:
    raw = resources.files(__package__).joinpath("corpus.json").read_text(encoding="utf-8")
    docs = []
    for item in json.loads(raw):
        # The title counts twice: a hit in the title says more than one in passing.
        tokens = tokenize(item["title"]) * 2 + tokenize(item["text"])
        sentences = tuple(s for s in re.split(r"(?<=[.!?])\s+", item["text"].strip()) if s)
        docs.append(_Doc(item["id"], item["title"], item["text"], sentences, Counter(tokens), len(tokens)))
    doc_freq: Counter[str] = Counter()
    for doc in docs:
        doc_freq.update(doc.terms.keys())
    logger.debug("corpus loaded: %d documents", len(docs))
    return _Index(tuple(docs), dict(doc_freq), sum(d.length for d in docs) / max(len(docs), 1))


def _best_sentence(index: _Index, doc: _Doc, terms: set[str]) -> str:
    # The snippet is the single sentence that covers the most query weight; the first
    # one wins ties, which keeps the result deterministic.
    def weight(sentence: str) -> float:
        return sum(index.idf(t) for t in terms & set(tokenize(sentence)))

    best = max(doc.sentences, key=weight, default=doc.text)
    return best if weight(best) > 0 else (doc.sentences[0] if doc.sentences else doc.text)


def search_corpus(query: str, k: int = 3) -> list[dict[str, Any]]:
    """Search the bundled corpus (BM25 over titles and texts); best ``k`` hits first.

    Returns ``[{id, title, snippet, score}]``; an empty list when nothing matches.
    """
    if not 1 <= k <= 10:
        raise ValueError("k must be between 1 and 10")
    index = _index()
    terms = tokenize(query)
    if not terms:
        return []
    k1, b = 1.5, 0.75
    scored: list[tuple[float, int, _Doc]] = []
    for position, doc in enumerate(index.docs):
        score = 0.0
        for term in set(terms):
            tf = doc.terms.get(term, 0)
            if tf:
                norm = tf * (k1 + 1) / (tf + k1 * (1 - b + b * doc.length / index.avg_length))
                score += index.idf(term) * norm
        if score > 0:
            scored.append((score, position, doc))
    scored.sort(key=lambda item: (-item[0], item[1]))
    return [
        {"id": doc.id, "title": doc.title, "snippet": _best_sentence(index, doc, set(terms)), "score": round(score, 3)}
        for score, _, doc in scored[:k]
    ]


# ---------------------------------------------------------------- tool registry


class CalculatorArgs(BaseModel):
    expression: str = Field(description="Arithmetic expression, e.g. '17 * 23 + 4' or 'sqrt(2) ** 3'.")


class SearchArgs(BaseModel):
    query: str = Field(description="Keywords to look for, e.g. 'redis streams consumer groups'.")
    k: int = Field(3, ge=1, le=10, description="How many documents to return.")


_REGISTRY: dict[str, tuple[Callable[..., Any], type[BaseModel], str]] = {
    "calculator": (calculator, CalculatorArgs, "Evaluate an arithmetic expression exactly. Use it for any arithmetic."),
    "search_corpus": (search_corpus, SearchArgs, "Keyword search over a small encyclopedia of tech and general facts."),
}

TOOL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def langchain_tools() -> list[BaseTool]:
    """The tools as LangChain ``StructuredTool`` objects, for ``model.bind_tools``."""
    return [
        StructuredTool.from_function(func=func, name=name, description=description, args_schema=schema)
        for name, (func, schema, description) in _REGISTRY.items()
    ]


def run_tool(name: str, args: Mapping[str, Any]) -> Any:
    """Validate ``args`` and call tool ``name`` synchronously (run it in a thread).

    Raises ValueError with a readable message for an unknown tool, bad arguments, or a
    tool's own refusal.
    """
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ValueError(f"unknown tool {name!r}; available: {', '.join(TOOL_NAMES)}")
    func, schema, _ = entry
    try:
        parsed = schema.model_validate(dict(args))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "arguments"
        raise ValueError(f"bad argument {where}: {first['msg']}") from None
    return func(**parsed.model_dump())
