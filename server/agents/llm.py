"""The pluggable chat model of the built-in agent: scripted (offline) or OpenAI-compatible."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.tool import tool_call, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

from .scripted import ScriptedReply, scripted_reply

if TYPE_CHECKING:
    from server.config import Settings

logger = logging.getLogger(__name__)


def _tool_names(tools: Sequence[Any] | None) -> set[str]:
    names = set()
    for spec in tools or ():
        function = spec.get("function", spec) if isinstance(spec, dict) else {}
        if name := function.get("name"):
            names.add(str(name))
    return names


def _pieces(text: str) -> list[str]:
    # Word-sized deltas with their trailing whitespace, like a real tokenizer's stream.
    return re.findall(r"\S+\s*|\s+", text)


class ScriptedChatModel(BaseChatModel):
    """A deterministic, offline chat model that plays the reflective agent's roles.

    Its replies come from rules over the conversation (see ``scripted.py``): a plan and a
    tool call for the planner, a ``VERDICT/SCORE/REASON`` judgement for the critic, an
    answer built from the tool results for the answerer. Streaming paces the tokens at
    ``tokens_per_s`` so a run takes about as long as one with a real model.
    """

    tokens_per_s: float = Field(default=60.0, gt=0)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"tokens_per_s": self.tokens_per_s}

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        formatted = [convert_to_openai_tool(t) for t in tools]
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=formatted, **kwargs)

    def _reply(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> ScriptedReply:
        # tool_choice="none" means the caller wants text only, whatever the rules say.
        names = set() if kwargs.get("tool_choice") == "none" else _tool_names(kwargs.get("tools"))
        return scripted_reply(messages, names)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        reply = self._reply(messages, kwargs)
        calls = [tool_call(name=c["name"], args=c["args"], id=c["id"]) for c in reply.tool_calls]
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=reply.text, tool_calls=calls))])

    def _chunks(self, reply: ScriptedReply) -> Iterator[ChatGenerationChunk]:
        for piece in _pieces(reply.text):
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
        if reply.tool_calls:
            chunks = [
                tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=i)
                for i, c in enumerate(reply.tool_calls)
            ]
            yield ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=chunks))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        # LangChain itself reports each yielded chunk to the callbacks (and so to
        # LangGraph's "messages" stream); calling on_llm_new_token here would double them.
        yield from self._chunks(self._reply(messages, kwargs))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        delay = 1.0 / self.tokens_per_s
        for index, chunk in enumerate(self._chunks(self._reply(messages, kwargs))):
            if index:
                await asyncio.sleep(delay)
            yield chunk


def make_chat_model(settings: Settings) -> BaseChatModel:
    """The chat model ``settings.llm`` selects: ``scripted`` (default) or ``openai``."""
    if settings.llm == "scripted":
        return ScriptedChatModel(tokens_per_s=settings.scripted_tokens_per_s)
    if settings.llm == "openai":
        # Imported here so the default, offline mode never needs the OpenAI client.
        from langchain_openai import ChatOpenAI

        options: dict[str, Any] = {"model": settings.llm_model, "streaming": True}
        # Unset values fall through to ChatOpenAI's own OPENAI_* environment variables.
        if settings.llm_base_url:
            options["base_url"] = settings.llm_base_url
        if settings.llm_api_key:
            options["api_key"] = settings.llm_api_key
        logger.info("chat model: openai-compatible %s at %s", settings.llm_model, settings.llm_base_url or "default URL")
        return ChatOpenAI(**options)
    raise ValueError(f"unknown llm {settings.llm!r}; expected 'scripted' or 'openai'")
