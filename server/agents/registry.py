"""Agents by name: the built-in ``reflective`` plus user graphs loaded from ``module:attribute``."""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.util
import logging
import re
import sys
import types
import typing
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langgraph.graph import StateGraph
from langgraph.pregel import Pregel
from pydantic import BaseModel, ValidationError

if TYPE_CHECKING:
    from server.config import Settings

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "array": (list, tuple), "object": (dict,), "null": (type(None),),
}
_PY_TYPES: dict[Any, str] = {
    str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object",
}


class AgentLoadError(Exception):
    """An agent spec that cannot be turned into a graph; the message says why."""


class UnknownAgent(KeyError):
    """No agent is registered under this name."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:  # KeyError would print the repr of its argument
        return f"unknown agent {self.name!r}"


class InvalidInput(ValueError):
    """An agent input that fails the agent's schema; ``field`` is a dotted path ("input" for the whole)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _json_type_ok(value: Any, schema: dict[str, Any]) -> bool:
    if "anyOf" in schema or "oneOf" in schema:
        return any(_json_type_ok(value, branch) for branch in schema.get("anyOf", schema.get("oneOf", [])))
    kinds = schema.get("type")
    if kinds is None:
        return True  # $ref, enum, ...: too rich to check here; the graph will
    for kind in [kinds] if isinstance(kinds, str) else kinds:
        expected = _JSON_TYPES.get(kind, (object,))
        if isinstance(value, expected) and not (isinstance(value, bool) and kind in ("integer", "number")):
            return True
    return False


def _schema_from_annotations(schema_type: Any) -> dict[str, Any]:
    """A shallow JSON schema for a TypedDict pydantic cannot read (``typing.TypedDict`` before 3.12)."""
    try:
        hints = typing.get_type_hints(schema_type)
    except Exception:  # noqa: BLE001 - unresolvable annotations: accept any object
        return {"type": "object"}
    properties = {}
    for key, hint in hints.items():
        origin = typing.get_origin(hint)
        if origin is typing.Annotated:
            origin = typing.get_origin(typing.get_args(hint)[0]) or typing.get_args(hint)[0]
        kind = _PY_TYPES.get(origin or hint)
        properties[key] = {"type": kind} if kind else {}
    required = sorted(getattr(schema_type, "__required_keys__", ()))
    return {"type": "object", "properties": properties, "required": required}


@dataclass(frozen=True)
class AgentSpec:
    """A registered agent: its compiled graph and how its input is checked."""

    name: str
    graph: Any
    input_model: type[BaseModel] | None = None
    description: str = ""

    @functools.cached_property
    def _model(self) -> type[BaseModel] | None:
        if self.input_model is not None:
            return self.input_model
        declared = getattr(getattr(self.graph, "builder", None), "input_schema", None)
        return declared if isinstance(declared, type) and issubclass(declared, BaseModel) else None

    def input_json_schema(self) -> dict[str, Any]:
        """The JSON schema clients see in ``GET /agents`` (a copy: callers may change it)."""
        return copy.deepcopy(self._input_schema)

    @functools.cached_property
    def _input_schema(self) -> dict[str, Any]:
        # Built once per agent: LangGraph builds a pydantic TypeAdapter for it on every call,
        # which was the largest single cost of a POST /runs (a fifth of a run's start).
        if self._model is not None:
            return self._model.model_json_schema()
        try:
            return dict(self.graph.get_input_jsonschema())
        except Exception:  # noqa: BLE001 - see _schema_from_annotations
            return _schema_from_annotations(getattr(getattr(self.graph, "builder", None), "input_schema", None))

    def validate_input(self, data: Any) -> dict[str, Any]:
        """Check ``data`` against the agent's input schema; return the graph input or raise InvalidInput."""
        if self._model is not None:
            try:
                return self._model.model_validate(data).model_dump(mode="json")
            except ValidationError as exc:
                first = exc.errors()[0]
                field = ".".join(str(part) for part in first["loc"]) or "input"
                raise InvalidInput(field, first["msg"]) from None
        if not isinstance(data, dict):
            raise InvalidInput("input", "must be a JSON object")
        # Graphs with TypedDict state: a shallow check (object, required keys, unknown keys,
        # top-level types). Deeper coercion, e.g. of chat messages, is the graph's own job.
        schema = self._input_schema
        properties: dict[str, Any] = schema.get("properties") or {}
        for key in schema.get("required") or []:
            if key not in data:
                raise InvalidInput(str(key), "Field required")
        for key, value in data.items():
            if properties and key not in properties:
                raise InvalidInput(str(key), "Unknown field")
            if key in properties and not _json_type_ok(value, properties[key]):
                expected = properties[key].get("type", "the declared type")
                raise InvalidInput(str(key), f"Input should be of type {expected}")
        return dict(data)


def _resolve(obj: Any, spec: str) -> Any:
    if isinstance(obj, Pregel):
        return obj
    if isinstance(obj, StateGraph):
        return obj.compile()
    if callable(obj) and not isinstance(obj, type):
        try:
            made = obj()
        except Exception as exc:
            raise AgentLoadError(f"{spec}: calling the factory failed: {type(exc).__name__}: {exc}") from exc
        if isinstance(made, Pregel):
            return made
        if isinstance(made, StateGraph):
            return made.compile()
        raise AgentLoadError(f"{spec}: the factory returned {type(made).__name__}, not a LangGraph graph")
    raise AgentLoadError(
        f"{spec}: {type(obj).__name__} is not a LangGraph graph (expected a compiled graph, a StateGraph or a factory)"
    )


def _import_file(path_text: str, spec: str) -> types.ModuleType:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise AgentLoadError(f"{spec}: file not found: {path.resolve()}")
    # A fresh name per load: two user files both called graph.py must not collide.
    module_name = f"thoughtstream_agent_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{uuid.uuid4().hex[:8]}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise AgentLoadError(f"{spec}: cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    # Registered before running so type hints (TypedDict states) resolve against it.
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise AgentLoadError(f"{spec}: importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


def load_graph(spec: str) -> Any:
    """Load ``package.module:attribute`` or ``path/to/file.py:attribute`` as a compiled graph.

    The attribute may be a compiled graph, an uncompiled StateGraph (compiled here) or a
    zero-argument callable returning either. Raises AgentLoadError with the reason.
    """
    return _load(spec)[0]


def _load(spec: str) -> tuple[Any, types.ModuleType]:
    module_part, sep, attribute = spec.strip().rpartition(":")
    if not sep or not module_part or not attribute:
        raise AgentLoadError(f"{spec!r}: expected 'package.module:attribute' or 'path/to/file.py:attribute'")
    if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
        module = _import_file(module_part, spec)
    else:
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as exc:
            missing = f"module {exc.name!r} not found" if exc.name else str(exc)
            raise AgentLoadError(f"{spec}: cannot import {module_part!r}: {missing}") from exc
        except Exception as exc:
            raise AgentLoadError(f"{spec}: importing {module_part!r} failed: {type(exc).__name__}: {exc}") from exc
    obj: Any = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise AgentLoadError(f"{spec}: module {module_part!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    return _resolve(obj, spec), module


class AgentRegistry:
    """The agents this server can run, by name (one instance per app, built from settings)."""

    def __init__(self, specs: Iterable[AgentSpec] = ()) -> None:
        self._agents: dict[str, AgentSpec] = {}
        for agent in specs:
            self.register(agent)

    @classmethod
    def from_settings(cls, settings: Settings) -> AgentRegistry:
        """The built-in ``reflective`` agent plus every ``settings.agents`` entry ``name=SPEC``."""
        from .reflective import ReflectiveInput, build_reflective

        registry = cls()
        registry.register(
            AgentSpec(
                name="reflective",
                graph=build_reflective(settings),
                input_model=ReflectiveInput,
                description="Plans, uses tools (calculator, corpus search), critiques its evidence and answers.",
            )
        )
        for entry in settings.agents:
            registry.register(cls.spec_from_entry(entry))
        return registry

    @staticmethod
    def spec_from_entry(entry: str) -> AgentSpec:
        """Parse and load one ``name=module:attribute`` entry."""
        name, sep, spec = entry.partition("=")
        name, spec = name.strip(), spec.strip()
        if not sep or not spec:
            raise AgentLoadError(
                f"agent entry {entry!r}: expected 'name=module:attribute' or 'name=path/file.py:attribute'"
            )
        if not _NAME.match(name):
            raise AgentLoadError(f"agent entry {entry!r}: name must be 1-64 letters, digits, '_', '-' or '.'")
        try:
            graph, module = _load(spec)
        except AgentLoadError as exc:
            raise AgentLoadError(f"agent {name!r}: {exc}") from exc
        # The module docstring's first line is the most natural description a user writes.
        doc = (module.__doc__ or "").strip()
        logger.info("loaded agent %s from %s", name, spec)
        return AgentSpec(name=name, graph=graph, description=doc.splitlines()[0] if doc else f"User graph {spec}")

    def register(self, agent: AgentSpec) -> None:
        if agent.name in self._agents:
            raise AgentLoadError(f"agent {agent.name!r} is already registered")
        self._agents[agent.name] = agent

    def get(self, name: str) -> AgentSpec:
        try:
            return self._agents[name]
        except KeyError:
            raise UnknownAgent(name) from None

    def names(self) -> list[str]:
        return list(self._agents)

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"name": a.name, "description": a.description, "input_schema": a.input_json_schema()}
            for a in self._agents.values()
        ]

    def __contains__(self, name: object) -> bool:
        return name in self._agents

    def __len__(self) -> int:
        return len(self._agents)


class CheckpointedGraphs:
    """The registry's graphs bound to one checkpointer, each built once (the executor runs
    them; the LangGraph protocol reads and updates threads' states with them)."""

    def __init__(self, registry: AgentRegistry, checkpointer: Any) -> None:
        self.registry = registry
        self.checkpointer = checkpointer
        self._graphs: dict[str, Any] = {}

    def get(self, agent: str) -> Any:
        graph = self._graphs.get(agent)
        if graph is None:
            graph = self.registry.get(agent).graph
            if self.checkpointer is not None:
                graph = graph.copy(update={"checkpointer": self.checkpointer})
            self._graphs[agent] = graph
        return graph
