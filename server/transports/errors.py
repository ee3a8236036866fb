"""One JSON error shape for every HTTP failure: {"error": {"code", "message"}}."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse


def error_response(status: int, code: str, message: str, *,
                   headers: dict[str, str] | None = None, **detail: Any) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    body.update(detail)
    return JSONResponse({"error": body}, status_code=status, headers=headers)
