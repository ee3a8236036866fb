"""Agents: the registry of runnable graphs, the built-in reflective agent, its model and tools."""

from .llm import ScriptedChatModel, make_chat_model
from .reflective import ReflectiveInput, build_reflective, parse_verdict
from .registry import AgentLoadError, AgentRegistry, AgentSpec, InvalidInput, UnknownAgent, load_graph
from .tools import calculator, search_corpus

__all__ = [
    "AgentLoadError",
    "AgentRegistry",
    "AgentSpec",
    "InvalidInput",
    "ReflectiveInput",
    "ScriptedChatModel",
    "UnknownAgent",
    "build_reflective",
    "calculator",
    "load_graph",
    "make_chat_model",
    "parse_verdict",
    "search_corpus",
]
