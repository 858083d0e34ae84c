"""POST /v1/decide: a preflight decision that reserves nothing."""

from __future__ import annotations

from typing import Any, Final

import msgspec
from litestar import Request, Response, post

from app.api.request_parsing import (
    api_key_caller,
    check_idempotency_header,
    context_json,
    decode_body,
    read_body,
)
from app.api.sql_call import respond
from app.wire import DecisionRequest

DECIDE_SQL: Final = (
    "SELECT cycles.decide(p_api_key => %(key)s, p_request => %(request)s::jsonb,"
    " p_ctx => %(ctx)s::jsonb)::text")

decoder: Final = msgspec.json.Decoder(DecisionRequest)


@post("/v1/decide")
async def decide(request: Request[Any, Any, Any]) -> Response[bytes]:
    raw = await read_body(request)
    caller = api_key_caller(request)
    parsed, body = decode_body(raw, decoder)
    check_idempotency_header(request, parsed.idempotency_key)
    return await respond(request, DECIDE_SQL, {
        "key": caller.api_key, "request": body, "ctx": context_json(request, caller)})


ROUTES: Final = [decide]
