"""Request bodies of the LangGraph protocol, as the official SDKs send them.

Lenient where the SDKs are (unknown keys are ignored: newer SDKs send more), strict on
the types the server acts on, so a wrong type is a 422 naming the field, never a 500.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

StreamMode = Literal["values", "updates", "messages", "messages-tuple", "custom", "events", "debug",
                     "tasks", "checkpoints"]


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class AssistantSearch(Lenient):
    graph_id: StrictStr | None = None
    name: StrictStr | None = None
    metadata: dict[str, Any] | None = None
    limit: StrictInt = Field(10, ge=1, le=1000)
    offset: StrictInt = Field(0, ge=0)


class ThreadCreate(Lenient):
    # No "/" (it could never be addressed in a path again) and no whitespace or controls.
    thread_id: StrictStr | None = Field(None, min_length=1, max_length=200, pattern=r"^[^/\s\x00-\x1f\x7f]+$")
    metadata: dict[str, Any] | None = None
    if_exists: Literal["raise", "do_nothing"] | None = None


class ThreadPatch(Lenient):
    metadata: dict[str, Any] | None = None


class ThreadSearch(Lenient):
    metadata: dict[str, Any] | None = None
    status: Literal["idle", "busy", "interrupted", "error"] | None = None
    limit: StrictInt = Field(10, ge=1, le=1000)
    offset: StrictInt = Field(0, ge=0)


class HistoryRequest(Lenient):
    limit: StrictInt = Field(10, ge=1, le=1000)
    before: Union[StrictStr, dict[str, Any], None] = None
    metadata: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None


class Command(Lenient):
    resume: Any = None
    update: Any = None
    goto: Any = None


class RunCreate(Lenient):
    assistant_id: StrictStr = Field(min_length=1, max_length=200)
    input: Union[dict[str, Any], list[Any], None] = None
    command: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    checkpoint_id: StrictStr | None = None
    checkpoint: dict[str, Any] | None = None
    stream_mode: Union[StreamMode, list[StreamMode], None] = None
    stream_subgraphs: StrictBool | None = None
    stream_resumable: StrictBool | None = None
    on_disconnect: Literal["cancel", "continue"] | None = None
    multitask_strategy: Literal["reject", "enqueue", "interrupt", "rollback"] | None = None
    if_not_exists: Literal["create", "reject"] | None = None
    on_completion: Literal["delete", "keep"] | None = None
    interrupt_before: Union[Literal["*"], list[StrictStr], None] = None
    interrupt_after: Union[Literal["*"], list[StrictStr], None] = None


class CancelMany(Lenient):
    thread_id: StrictStr | None = None
    run_ids: list[StrictStr] | None = None
    status: Literal["pending", "running", "all"] | None = None


class StateAt(Lenient):
    checkpoint: dict[str, Any] | None = None
    subgraphs: StrictBool | None = None


class StateUpdate(Lenient):
    values: Union[dict[str, Any], list[Any], None] = None
    as_node: StrictStr | None = None
    checkpoint: dict[str, Any] | None = None
    checkpoint_id: StrictStr | None = None
