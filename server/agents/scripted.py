"""What the scripted chat model says: deterministic rules over the conversation it is given.

The rules play the three roles of the reflective agent, recognised by the system prompt
("You are the planner/critic/answerer ..."). They read only the messages (the question,
earlier tool calls and their results), so the same conversation always gets the same
reply, and a checkpointed run replays exactly.

Each role splits the question the same way (``questions.split_question``): every piece of
arithmetic is one part, for the calculator; the rest is one part, for the corpus search.
The planner calls a tool for each part that still lacks evidence, the critic approves only
when every part has its evidence or is known to have none, and the answer covers each part,
saying plainly which one the corpus cannot answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from .questions import Arithmetic, split_question
from .tools import tokenize


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


# ---------------------------------------------------------------- judging each part of the question

# Errors that describe the expression itself; another attempt cannot change them.
_MATH_FACTS = ("division by zero", "too large", "not a real number", "not a finite number", "math domain")
_DECLINED = "declined"  # the tools node's "the user declined to run this tool"


def _norm(expression: str) -> str:
    return re.sub(r"\s+", "", expression)


def _repair(expression: str) -> str:
    fixed = re.sub(r"(?<=\d),(?=\d{3}\b)", "", expression)  # thousands separators
    fixed = re.sub(r"[\s+\-*/%]+$", "", fixed)
    fixed += ")" * max(fixed.count("(") - fixed.count(")"), 0)
    return fixed.lstrip(")")


def _covered(hit: dict[str, Any]) -> set[str]:
    return set(tokenize(f"{hit.get('title', '')} {hit.get('snippet', '')}"))


def _quote(words: Sequence[str]) -> str:
    quoted = [f"'{w}'" for w in words]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _hits(calls: Sequence[_Call], wanted: set[str]) -> list[dict[str, Any]]:
    """Relevant search hits of ``calls``, first sighting only, in the order found.

    Only evidence counts: a hit far below the best one of its search matched in passing, and
    so does one sharing a single common word with a longer question ('world' for "who won
    the 2018 World Cup"). A hit is relevant when its title names a key term, or when it
    covers at least half of them.
    """
    seen: set[tuple[Any, Any]] = set()
    hits = []
    for call in calls:
        if call.name == "search_corpus" and call.ok and isinstance(call.result, list):
            found = [h for h in call.result if isinstance(h, dict)]
            top = max((float(h.get("score", 0)) for h in found), default=0.0)
            for hit in found:
                key = (hit.get("id"), hit.get("snippet"))
                if key in seen or float(hit.get("score", 0)) < 0.4 * top:
                    continue
                covered = _covered(hit) & wanted
                if set(tokenize(str(hit.get("title", "")))) & wanted or (covered and 2 * len(covered) >= len(wanted)):
                    seen.add(key)
                    hits.append(hit)
    return hits


def _cover(wanted: set[str], hits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Up to three hits, each adding key terms of the question that the earlier ones lacked."""
    wanted, chosen = set(wanted), []
    while len(chosen) < 3 and hits:
        best = max(hits, key=lambda h: len(_covered(h) & wanted))
        if not _covered(best) & wanted:
            break
        chosen.append(best)
        wanted -= _covered(best)
    return chosen


def _titles(hits: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(str(h.get("title", "?")) for h in hits))


@dataclass
class _Part:
    """What the evidence so far says about one part of the question (the same for every role)."""

    kind: str  # "calc" or "facts"
    position: int  # where the part starts in the question: parts are handled in that order
    alone: bool  # the only part of the question
    state: str = "pending"  # pending (not tried), retry (another call can help), done, gap (cannot be answered)
    score: float = 0.1
    reason: str = ""
    calls: list[_Call] = field(default_factory=list)  # this part's tool calls, oldest first
    expression: str = ""  # calc: the expression as the question spells it
    words: list[tuple[str, str]] = field(default_factory=list)  # facts: key terms (as written, stem)
    hits: list[dict[str, Any]] = field(default_factory=list)  # facts: relevant hits
    missing: list[str] = field(default_factory=list)  # facts: key terms no hit covers

    def mark(self, state: str, score: float, reason: str) -> _Part:
        self.state, self.score, self.reason = state, score, reason
        return self

    @property
    def tried(self) -> str:
        return str(self.calls[-1].args.get("expression", self.expression)) if self.calls else self.expression


def _calc_calls(conv: _Conversation, parts: Sequence[Arithmetic]) -> list[list[_Call]]:
    """The calculator calls that tried each arithmetic part; a repaired expression still counts."""
    calcs = [c for c in conv.calls if c.name == "calculator"]
    out, claimed = [], set()
    for part in parts:
        names, name = set(), part.expression
        for _ in range(3):
            names.add(_norm(name))
            name = _repair(name)
        mine = [c for c in calcs if _norm(str(c.args.get("expression", ""))) in names]
        claimed.update(id(c) for c in mine)
        out.append(mine)
    # A model that spelled an expression its own way: hand its calls to the parts without any.
    spare = [c for c in calcs if id(c) not in claimed]
    for mine in out:
        if not mine and spare:
            mine.append(spare.pop(0))
    return out


def _judge_calc(part: _Part) -> _Part:
    if not part.calls:
        return part.mark("pending", 0.1, f"`{part.expression}` has not been evaluated with the calculator yet.")
    last, tried = part.calls[-1], part.tried
    if last.ok:
        what = "the question directly" if part.alone else "the arithmetic"
        return part.mark("done", 0.95, f"The calculator evaluated `{tried}` to {last.result}, which answers {what}.")
    error = str(last.result)
    if _DECLINED in error:
        return part.mark("gap", 0.3, f"The user declined to evaluate `{tried}`; the answer must say it is not computed.")
    if any(fact in error for fact in _MATH_FACTS):
        return part.mark("done", 0.6, f"`{tried}` has no finite value ({error}); the answer should say so.")
    if _repair(tried) != tried:
        return part.mark("retry", 0.2, f"The calculator could not evaluate `{tried}`: {error}. Fix the expression.")
    return part.mark("gap", 0.2, f"The calculator could not evaluate `{tried}` ({error}) and no fix is apparent; "
                    "the answer must say so.")


def _judge_facts(part: _Part) -> _Part:
    names = [w for w, _ in part.words]
    wanted = {key for _, key in part.words}
    if not part.calls:
        return part.mark("pending", 0.1, f"Nothing has been searched for {_quote(names)} yet.")
    part.hits = _hits(part.calls, wanted)
    covered = set().union(*(_covered(h) for h in part.hits)) if part.hits else set()
    part.missing = [word for word, key in part.words if key not in covered]
    coverage = 1 - len(part.missing) / max(len(part.words), 1)
    if not part.missing:
        what = "every key term of the question" if part.alone else _quote(names)
        return part.mark("done", 0.9, f"The snippets from {_quote(_titles(_cover(wanted, part.hits)))} cover {what}.")
    last, missing = part.calls[-1], _quote(part.missing)
    if not last.ok and _DECLINED in str(last.result):
        return part.mark("gap", 0.3, f"The user declined the search for {missing}; the answer must say so.")
    # Diminishing returns: a search that surfaced nothing new will not be beaten by another.
    if len(part.calls) > 1 and len(_hits(part.calls[:-1], wanted)) == len(part.hits):
        if not part.hits:
            return part.mark("gap", 0.3, f"Searching again found nothing about {missing}: the corpus does not cover "
                            "it, so the answer must say so rather than guess.")
        return part.mark("gap", 0.3 + 0.3 * coverage,
                        f"Searching again found nothing new about {missing}; the answer should say the corpus lacks it.")
    if not part.hits:
        return part.mark("retry", 0.15, f"The search returned no documents about {_quote(names)}, so there is nothing "
                        "to base an answer on.")
    found = [w for w in names if w not in part.missing]
    return part.mark("retry", 0.25 + 0.35 * coverage, f"The results cover {_quote(found)} but say nothing about {missing}.")


def _judge(conv: _Conversation) -> list[_Part]:
    """The question's parts, in the order asked, each judged on the tool results so far."""
    split = split_question(conv.question)
    words = list(split.keywords)
    if not split.arithmetic and not words:  # all stopwords: search for the question as asked
        words = [(conv.question.strip() or "overview", conv.question.strip().lower())]
    alone = len(split.arithmetic) + bool(words) == 1
    parts = [
        _judge_calc(_Part("calc", a.start, alone, calls=calls, expression=a.expression))
        for a, calls in zip(split.arithmetic, _calc_calls(conv, split.arithmetic))
    ]
    if words:
        searches = [c for c in conv.calls if c.name == "search_corpus"]
        parts.append(_judge_facts(_Part("facts", split.rest_start, alone, calls=searches, words=words)))
    return sorted(parts, key=lambda p: p.position)


# ---------------------------------------------------------------- the three roles


def _plan(conv: _Conversation, tools: set[str]) -> ScriptedReply:
    parts, first_round = _judge(conv), not conv.calls
    next_id = len(conv.calls) + 1
    calls: list[dict[str, Any]] = []

    def call(name: str, **args: Any) -> None:
        if name in tools:
            calls.append({"name": name, "args": args, "id": f"call_{next_id + len(calls)}"})

    sentences = []
    if first_round and len(parts) > 1:
        subjects = [f"the value of `{p.expression}`" if p.kind == "calc" else
                    f"what the corpus says about {_quote([w for w, _ in p.words])}" for p in parts]
        sentences.append(f"The question has {len(parts)} parts: {', '.join(subjects[:-1])} and {subjects[-1]}.")
    for part in parts:
        sentences.append(_plan_calc(part, call) if part.kind == "calc" else _plan_facts(part, call))
    if not calls and not first_round:
        sentences.append("Every part has what evidence the tools can give, so there is nothing more to try.")
    return ScriptedReply(" ".join(sentences), tuple(calls))


def _plan_calc(part: _Part, call: Callable[..., None]) -> str:
    tried, last = part.tried, part.calls[-1] if part.calls else None
    if last is None:
        call("calculator", expression=part.expression)
        lead = f"The question asks for the value of {part.expression}. " if part.alone else ""
        return (f"{lead}Arithmetic by hand is easy to get wrong, so I will evaluate `{part.expression}` with the "
                "calculator rather than by hand.")
    if part.state == "retry":
        fixed = _repair(tried)
        call("calculator", expression=fixed)
        return f"The calculator rejected `{tried}`: {last.result}. I will fix it to `{fixed}` and evaluate it again."
    if last.ok:
        return f"The calculator already returned {last.result} for `{tried}`."
    return (f"The calculator rejected `{tried}`: {last.result}. Another attempt would fail the same way, so the "
            "answer will report that instead.")


def _plan_facts(part: _Part, call: Callable[..., None]) -> str:
    names = [w for w, _ in part.words]
    if not part.calls:
        call("search_corpus", query=" ".join(names), k=3)
        one = len(names) == 1
        terms = f"The key {'term' if one else 'terms'} of {'the question' if part.alone else 'the rest'}"
        return (f"{terms} {'is' if one else 'are'} {_quote(names)}. I will search the bundled corpus for "
                f"{'it' if one else 'them'} and read the snippets before answering.")
    if part.state == "done":
        return f"The snippets already cover {_quote(names)}."
    if part.state == "gap":
        return f"Another search would not find more about {_quote(part.missing)}, so the answer will say so."
    used = {(str(c.args.get("query", "")).lower(), int(c.args.get("k", 3))) for c in part.calls}
    query, k = " ".join(part.missing if part.hits else names), 3
    while (query.lower(), k) in used and k < 10:
        k = min(k + 3, 10)
    call("search_corpus", query=query, k=k)
    if not part.hits:
        return f"The search for {_quote(names)} found nothing. I will try again with a wider net of {k} results."
    one = len(part.missing) == 1
    return (f"The reviewer pointed out that the results say nothing about {_quote(part.missing)}. I will search for "
            f"{'that term on its own' if one else 'those terms on their own'} so the snippets focus on "
            f"{'it' if one else 'them'}.")


def _verdict(verdict: str, score: float, reason: str) -> ScriptedReply:
    return ScriptedReply(f"VERDICT: {verdict}\nSCORE: {score:.2f}\nREASON: {reason}")


def _critique(conv: _Conversation) -> ScriptedReply:
    """Approve only when every part has its evidence (a calculator result, a relevant hit) or
    is known not to have any; a part still worth a tool call means revise."""
    if not conv.calls:
        return _verdict("revise", 0.1, "No tool has been used yet, so an answer would be unsupported.")
    if not conv.rounds[-1]:
        reason = "The planner made no new attempt, so more rounds will not help; the answer must report what failed."
        return _verdict("approve", 0.3, reason)
    parts = _judge(conv)
    score = sum(p.score for p in parts) / len(parts)
    verdict = "revise" if any(p.state in ("pending", "retry") for p in parts) else "approve"
    return _verdict(verdict, score, " ".join(p.reason for p in parts))


def _answer_calc(part: _Part) -> str:
    if not part.calls:
        return f"I did not get to evaluate `{part.expression}` with the calculator, so I cannot give its value."
    last, tried = part.calls[-1], part.tried
    if last.ok:
        return f"{tried} = {last.result}."
    if _DECLINED in str(last.result):
        return f"I did not evaluate `{tried}`: the user declined to run the calculator."
    if any(fact in str(last.result) for fact in _MATH_FACTS):
        return f"`{tried}` has no finite real value: {last.result}."
    return f"I could not evaluate `{tried}`: the calculator reported \"{last.result}\"."


def _answer_facts(part: _Part) -> str:
    topic = _quote([w for w, _ in part.words])
    if not part.calls:
        return f"I did not search the corpus for {topic}, so I cannot answer that part."
    if part.state == "gap" and _DECLINED in str(part.calls[-1].result) and not part.hits:
        return f"The user declined the search, so I cannot say anything about {topic}."
    if not part.hits:
        return (f"I could not find anything about {topic} in the bundled corpus, so I cannot answer "
                f"{'this' if part.alone else 'that part'} reliably.")
    keys = {key for _, key in part.words}
    chosen = _cover(keys, part.hits)
    if len(chosen) < 2:  # one sentence is a thin answer; add a second that is about the question too
        related = [h for h in part.hits if h not in chosen and len(_covered(h) & keys) * 2 >= len(keys)]
        chosen += related[: 2 - len(chosen)]
    chosen = chosen or part.hits[:1]
    lead = f"The bundled corpus says nothing about {_quote(part.missing)}, but it does say this. " if part.missing else ""
    titles = _titles(chosen)
    body = " ".join(str(h["snippet"]).strip() for h in chosen)
    return f"{lead}{body} (Source{'s' if len(titles) > 1 else ''}: {', '.join(titles)}.)"


def _answer(conv: _Conversation) -> str:
    return " ".join(_answer_calc(p) if p.kind == "calc" else _answer_facts(p) for p in _judge(conv))


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
