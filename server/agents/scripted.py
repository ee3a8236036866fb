"""What the scripted chat model says: deterministic rules over the conversation it is given.

The rules play the three roles of the reflective agent, recognised by the system prompt
("You are the planner/critic/answerer ..."). They read only the messages (the question,
earlier tool calls and their results), so the same conversation always gets the same
reply, and a checkpointed run replays exactly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from .tools import STOPWORDS, stem, tokenize


@dataclass(frozen=True)
class ScriptedReply:
    text: str
    tool_calls: tuple[dict[str, Any], ...] = ()  # {"name", "args", "id"}


@dataclass
class _Call:
    id: str
    name: str
    args: dict[str, Any]
    ok: bool = False
    result: Any = None  # parsed tool output, or the error text when not ok


@dataclass
class _Conversation:
    role: str
    question: str
    rounds: list[list[_Call]] = field(default_factory=list)  # one list per planner message

    @property
    def calls(self) -> list[_Call]:
        return [call for calls in self.rounds for call in calls]


def _text(message: BaseMessage) -> str:
    return message.content if isinstance(message.content, str) else message.text


def _read(messages: Sequence[BaseMessage]) -> _Conversation:
    system = next((_text(m) for m in messages if isinstance(m, SystemMessage)), "")
    role_match = re.search(r"you are the (\w+)", system.lower())
    humans = [_text(m) for m in messages if isinstance(m, HumanMessage)]
    conv = _Conversation(role_match.group(1) if role_match else "", humans[0] if humans else "")
    by_id: dict[str, _Call] = {}
    for message in messages:
        if isinstance(message, AIMessage):
            calls = [_Call(str(c.get("id")), c["name"], dict(c.get("args") or {})) for c in message.tool_calls]
            by_id.update((call.id, call) for call in calls)
            conv.rounds.append(calls)
        elif isinstance(message, ToolMessage) and message.tool_call_id in by_id:
            call, content = by_id[message.tool_call_id], _text(message)
            call.ok, call.result = message.status != "error", content.removeprefix("Error: ")
            if call.ok and content[:1] in "[{":
                try:
                    call.result = json.loads(content)
                except ValueError:
                    pass
    return conv


# ---------------------------------------------------------------- shared judgement

_MATH_CUES = {"calculate", "compute", "evaluate", "solve", "value", "result", "much", "many", "equal", "equals"}
_WORD_OPERATORS = [
    (r"\bmultiplied by\b", "*"), (r"\bdivided by\b", "/"), (r"\bto the power of\b", "**"),
    (r"\btimes\b", "*"), (r"\bplus\b", "+"), (r"\bminus\b", "-"), (r"\bsquare root of\b", "sqrt"),
    ("×", "*"), ("÷", "/"), ("−", "-"), (r"\^", "**"),
]
_FUNCS = r"(?:sqrt|abs|round|floor|ceil|log10|log|exp|sin|cos|tan|min|max)"
_CANDIDATE = re.compile(rf"(?:{_FUNCS}|[\d.,_()+\-*/%\s])+")
_ARITHMETIC = re.compile(rf"\d[\s)]*(?:\*\*|//|[+\-*/%])[\s(+\-]*\d|{_FUNCS}\s*\(\s*[-+]?\d")
# Errors that describe the expression itself; another attempt cannot change them.
_MATH_FACTS = ("division by zero", "too large", "not a real number", "not a finite number", "math domain")


def _keywords(text: str) -> list[tuple[str, str]]:
    """Content words of ``text`` as (as written, stem), first occurrence only."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for word in re.findall(r"[A-Za-z0-9]+", text):
        key = stem(word.lower())
        if word.lower() not in STOPWORDS and key not in seen:
            seen.add(key)
            out.append((word, key))
    return out


def find_expression(question: str) -> str | None:
    """The arithmetic expression the question asks about, or None if it is not arithmetic."""
    text = question
    for pattern, replacement in _WORD_OPERATORS:
        text = re.sub(pattern, replacement, text, flags=re.IGNORECASE)
    text = re.sub(r"sqrt\s+(\d[\d.]*)", r"sqrt(\1)", text)
    candidates = [m.group().strip(" ,.") for m in _CANDIDATE.finditer(text)]
    candidates = [c for c in candidates if _ARITHMETIC.search(c)]
    if not candidates:
        return None
    expression = max(candidates, key=len)
    # "What is 2020-05-29?" has digits and a minus but is about something else.
    rest = [w for w, _ in _keywords(text.replace(expression, " ")) if w.lower() not in _MATH_CUES]
    if rest and not any(w.lower() in _MATH_CUES for w, _ in _keywords(question)):
        return None
    return re.sub(r"\s+", " ", expression)


def _repair(expression: str) -> str:
    fixed = re.sub(r"(?<=\d),(?=\d{3}\b)", "", expression)  # thousands separators
    fixed = re.sub(r"[\s+\-*/%]+$", "", fixed)
    fixed += ")" * max(fixed.count("(") - fixed.count(")"), 0)
    return fixed.lstrip(")")


def _hits(conv: _Conversation) -> list[dict[str, Any]]:
    """Useful search hits over all rounds, first sighting only, in the order found.

    A hit far below the best one of its search matched only in passing (one common word),
    so it is not evidence.
    """
    seen: set[tuple[Any, Any]] = set()
    hits = []
    for call in conv.calls:
        if call.name == "search_corpus" and call.ok and isinstance(call.result, list):
            found = [h for h in call.result if isinstance(h, dict)]
            top = max((float(h.get("score", 0)) for h in found), default=0.0)
            for hit in found:
                key = (hit.get("id"), hit.get("snippet"))
                if key not in seen and float(hit.get("score", 0)) >= 0.4 * top:
                    seen.add(key)
                    hits.append(hit)
    return hits


def _covered(hit: dict[str, Any]) -> set[str]:
    return set(tokenize(f"{hit.get('title', '')} {hit.get('snippet', '')}"))


def _missing(conv: _Conversation, hits: list[dict[str, Any]]) -> list[str]:
    covered = set().union(*(_covered(h) for h in hits)) if hits else set()
    return [word for word, key in _keywords(conv.question) if key not in covered]


def _quote(words: Sequence[str]) -> str:
    quoted = [f"'{w}'" for w in words]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _cover(conv: _Conversation, hits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Up to three hits, each adding key terms of the question that the earlier ones lacked."""
    wanted = {key for _, key in _keywords(conv.question)}
    chosen: list[dict[str, Any]] = []
    while len(chosen) < 3 and hits:
        best = max(hits, key=lambda h: len(_covered(h) & wanted))
        if not _covered(best) & wanted:
            break
        chosen.append(best)
        wanted -= _covered(best)
    return chosen


def _titles(hits: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(str(h.get("title", "?")) for h in hits))


def _last_call(conv: _Conversation, name: str) -> _Call | None:
    return next((c for c in reversed(conv.calls) if c.name == name), None)


# ---------------------------------------------------------------- the three roles


def _plan(conv: _Conversation, tools: set[str]) -> ScriptedReply:
    next_id = len(conv.calls) + 1

    def call(name: str, **args: Any) -> tuple[dict[str, Any], ...]:
        return ({"name": name, "args": args, "id": f"call_{next_id}"},) if name in tools else ()

    expression = find_expression(conv.question)
    last = _last_call(conv, "calculator")
    if expression is not None and last is None:
        text = (
            f"The question asks for the value of {expression}. Arithmetic by hand is easy to get wrong, "
            f"so I will evaluate `{expression}` with the calculator rather than by hand."
        )
        return ScriptedReply(text, call("calculator", expression=expression))
    if expression is not None and last is not None:
        tried = str(last.args.get("expression", expression))
        fixed = _repair(tried)
        if last.ok:
            text = f"The calculator already returned {last.result} for `{tried}`. I will evaluate it once more."
            return ScriptedReply(text, call("calculator", expression=tried))
        if fixed != tried:
            text = f"The calculator rejected `{tried}`: {last.result}. I will fix it to `{fixed}` and evaluate it again."
            return ScriptedReply(text, call("calculator", expression=fixed))
        return ScriptedReply(
            f"The calculator rejected `{tried}`: {last.result}. The expression cannot be repaired, so another "
            "attempt would fail the same way; I will report that instead."
        )

    keywords = [w for w, _ in _keywords(conv.question)] or [conv.question.strip() or "overview"]
    searches = [c.args for c in conv.calls if c.name == "search_corpus"]
    used = {(str(args.get("query", "")).lower(), int(args.get("k", 3))) for args in searches}
    if not used:
        key_terms = "term of the question is" if len(keywords) == 1 else "terms of the question are"
        return ScriptedReply(
            f"The key {key_terms} {_quote(keywords)}. I will search the bundled corpus for "
            f"{'it' if len(keywords) == 1 else 'them'} and read the snippets before answering.",
            call("search_corpus", query=" ".join(keywords), k=3),
        )
    hits = _hits(conv)
    missing = _missing(conv, hits)
    terms = missing if hits and missing else keywords
    query, k = " ".join(terms), 3
    while (query.lower(), k) in used and k < 10:
        k = min(k + 3, 10)
    if not hits:
        text = f"The search for {_quote(keywords)} found nothing. I will try again with a wider net of {k} results."
    elif missing:
        one = len(missing) == 1
        text = (
            f"The reviewer pointed out that the results say nothing about {_quote(missing)}. I will search for "
            f"{'that term on its own' if one else 'those terms on their own'} so the snippets focus on "
            f"{'it' if one else 'them'}."
        )
    else:
        text = f"The results mention every key term; as the reviewer asked, I will widen the search to {k} results."
    return ScriptedReply(text, call("search_corpus", query=query, k=k))


def _verdict(verdict: str, score: float, reason: str) -> ScriptedReply:
    return ScriptedReply(f"VERDICT: {verdict}\nSCORE: {score:.2f}\nREASON: {reason}")


def _critique(conv: _Conversation) -> ScriptedReply:
    if not conv.calls:
        return _verdict("revise", 0.1, "No tool has been used yet, so an answer would be unsupported.")
    if not conv.rounds[-1]:
        reason = "The planner made no new attempt, so more rounds will not help; the answer must report what failed."
        return _verdict("approve", 0.3, reason)
    calc = _last_call(conv, "calculator")
    if calc is not None:
        tried = calc.args.get("expression", "")
        if calc.ok:
            reason = f"The calculator evaluated `{tried}` to {calc.result}, which answers the question directly."
            return _verdict("approve", 0.95, reason)
        if any(fact in str(calc.result) for fact in _MATH_FACTS):
            return _verdict("approve", 0.6, f"`{tried}` has no finite value ({calc.result}); the answer should say so.")
        return _verdict("revise", 0.2, f"The calculator could not evaluate `{tried}`: {calc.result}. Fix the expression.")
    hits = _hits(conv)
    if not hits:
        return _verdict("revise", 0.15, "The search returned no documents, so there is nothing to base an answer on.")
    keywords = _keywords(conv.question)
    missing = _missing(conv, hits)
    coverage = 1 - len(missing) / max(len(keywords), 1)
    if not missing:
        titles = _quote(_titles(_cover(conv, hits)))
        return _verdict("approve", 0.9, f"The snippets from {titles} cover every key term of the question.")
    # Diminishing returns: a revision round that surfaced nothing new will not be beaten by another.
    earlier = _Conversation(conv.role, conv.question, conv.rounds[:-1])
    if len(conv.rounds) > 1 and len(_hits(earlier)) == len(hits):
        reason = f"Searching again found nothing new about {_quote(missing)}; the answer should say the corpus lacks it."
        return _verdict("approve", 0.3 + 0.3 * coverage, reason)
    found = [w for w, _ in keywords if w not in missing]
    covered = f"cover {_quote(found)} but " if found else ""
    return _verdict("revise", 0.25 + 0.35 * coverage, f"The results {covered}say nothing about {_quote(missing)}.")


def _answer(conv: _Conversation) -> str:
    calc = _last_call(conv, "calculator")
    if calc is not None:
        tried = calc.args.get("expression", "")
        if calc.ok:
            return f"{tried} = {calc.result}."
        if any(fact in str(calc.result) for fact in _MATH_FACTS):
            return f"`{tried}` has no finite real value: {calc.result}."
        return f"I could not evaluate `{tried}`: the calculator reported \"{calc.result}\"."
    hits = _hits(conv)
    if not hits:
        topic = _quote([w for w, _ in _keywords(conv.question)] or [conv.question])
        return f"I could not find anything about {topic} in the bundled corpus, so I cannot answer this reliably."
    chosen = _cover(conv, hits)
    if len(chosen) < 2:  # one sentence is a thin answer; add a second that is about the question too
        keys = {key for _, key in _keywords(conv.question)}
        related = [h for h in hits if h not in chosen and len(_covered(h) & keys) * 2 >= len(keys)]
        chosen += related[: 2 - len(chosen)]
    chosen = chosen or hits[:1]
    missing = _missing(conv, hits)
    lead = f"The bundled corpus says nothing about {_quote(missing)}, but it does say this. " if missing else ""
    titles = _titles(chosen)
    body = " ".join(str(h["snippet"]).strip() for h in chosen)
    return f"{lead}{body} (Source{'s' if len(titles) > 1 else ''}: {', '.join(titles)}.)"


def scripted_reply(messages: Sequence[BaseMessage], tool_names: set[str]) -> ScriptedReply:
    """The scripted model's whole reply to ``messages`` (tools it may call: ``tool_names``)."""
    conv = _read(messages)
    if conv.role == "planner":
        return _plan(conv, tool_names)
    if conv.role == "critic":
        return _critique(conv)
    if conv.role in ("answerer", "writer"):
        return ScriptedReply(_answer(conv))
    last = next((_text(m) for m in reversed(messages) if isinstance(m, HumanMessage)), "")
    return ScriptedReply(f"I am the reflective agent's scripted model; I have nothing to add to {last.strip()[:200]!r}.")
