"""What every dashboard page shares: templates, security headers, session
checks, form and query readers, redirects and confirmations.

Every page needs a session (otherwise: a redirect to the login page, and
nothing is read or done). Every POST needs the session's CSRF token (403
otherwise, nothing done). Dangerous actions first answer with a confirmation
page; only its form, which carries confirmed=yes, performs the action. After
an action the browser is redirected (303) back to the page it came from,
with the outcome in the query string (never anything secret).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

import msgspec
from litestar import Request, Response
from litestar.datastructures import Cookie, ResponseHeader
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.template.config import TemplateConfig

from app.dashboard.sessions import COOKIE_PATH, Session, load_session, tokens_equal

HERE: Final = Path(__file__).resolve().parent
MAX_FIELD_LENGTH: Final = 1024

# No script at all, no inline style, nothing from another origin; forms post
# only here; no framing.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'none'; style-src 'self'; img-src 'self'; form-action 'self';"
    " frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS: Final = [
    ResponseHeader(name="Content-Security-Policy", value=CONTENT_SECURITY_POLICY),
    ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
    ResponseHeader(name="X-Frame-Options", value="DENY"),
    ResponseHeader(name="Referrer-Policy", value="no-referrer"),
    ResponseHeader(name="Cache-Control", value="no-store"),
]


def ms_time(value: object) -> str:
    """Epoch milliseconds as a UTC date-time (reservation times are epoch ms)."""
    if not isinstance(value, int) or isinstance(value, bool):
        return ""
    return datetime.fromtimestamp(value / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def add_filters(engine: JinjaTemplateEngine) -> None:
    engine.engine.filters["ms_time"] = ms_time


TEMPLATE_CONFIG: Final = TemplateConfig(
    directory=HERE / "templates", engine=JinjaTemplateEngine, engine_callback=add_filters)


# Requests ------------------------------------------------------------------

def login_redirect() -> Redirect:
    return Redirect(path="/dashboard/login", status_code=303)


def render(name: str, request: Request[Any, Any, Any], session: Session | None, **context: Any) -> Template:
    return Template(template_name=name, context={
        "session": session, "path": request.url.path, "notice": request.query_params.get("notice"),
        "error": request.query_params.get("error"), **context})


def refusal_page(request: Request[Any, Any, Any], status: int, message: str) -> Template:
    response = render("refused.html", request, None, message=message)
    response.status_code = status
    return response


def form_text(form: Mapping[str, Any], name: str) -> str | None:
    value = form.get(name)
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or len(value) > MAX_FIELD_LENGTH or "\x00" in value:
        return None
    return value


def query_text(request: Request[Any, Any, Any], name: str, allowed: tuple[str, ...] | None = None) -> str | None:
    value: str | None = request.query_params.get(name)
    if not value or len(value) > MAX_FIELD_LENGTH or "\x00" in value:
        return None
    if allowed is not None and value not in allowed:
        return None
    return value


def form_integer(form: Mapping[str, Any], name: str) -> int | None:
    raw = form_text(form, name)
    if raw is None or not raw.lstrip("-").isdigit():
        return None
    value = int(raw)
    return value if -(2**63) <= value < 2**63 else None


async def checked_form(request: Request[Any, Any, Any]) -> tuple[Session | None, dict[str, Any], Response[Any] | None]:
    """The session and form of a POST, or the response refusing it: no
    session -> login page; a missing or wrong CSRF token -> 403."""
    session = await load_session(request)
    if session is None:
        return None, {}, login_redirect()
    form = form_fields(await request.form())
    if not tokens_equal(form_text(form, "csrf_token"), session.csrf_token):
        return None, {}, refusal_page(request, 403, "The form's CSRF token is missing or wrong; nothing was done.")
    return session, form, None


def form_fields(raw: Any) -> dict[str, Any]:
    """A posted form as a dict: one value as a string, a repeated field
    (checkboxes) as the list of its values."""
    return {name: values[0] if len(values) == 1 else values for name, values in raw.dict().items()}


def redirect_back(path: str, query: Mapping[str, str | None], **outcome: str) -> Redirect:
    kept = {name: value for name, value in query.items() if value}
    kept.update(outcome)
    return Redirect(path=f"{path}?{urlencode(kept)}" if kept else path, status_code=303)


def confirmation(
    request: Request[Any, Any, Any], session: Session, action: str, question: str, form: Mapping[str, Any],
    *, cancel: str | None = None, ask_reason: bool = False,
) -> Template:
    """The page asking to confirm `action`: its form re-posts `form` with
    confirmed=yes. `cancel` is where "Cancel" leads (by default the list
    the action belongs to)."""
    hidden = {name: value for name, value in form.items()
              if isinstance(value, str) and name not in {"csrf_token", "confirmed"}}
    if cancel is None:
        cancel = "/dashboard/reservations" if "reservations" in action else "/dashboard/budgets"
    return render("confirm.html", request, session, action=action, question=question, hidden=hidden,
                  cancel=cancel, ask_reason=ask_reason or "reason" in hidden or action.endswith("freeze"))


def page_links(path: str, filters: Mapping[str, Any], page: Mapping[str, Any], cursor: str | None) -> dict[str, Any]:
    """The template's pagination: the next page's URL (same filters, the
    page's next_cursor) when there is one, and whether this is not the first."""
    kept = {name: str(value) for name, value in filters.items() if value not in (None, "")}
    next_url = None
    if page.get("has_more") and page.get("next_cursor"):
        next_url = f"{path}?{urlencode({**kept, 'cursor': page['next_cursor']})}"
    return {"next_url": next_url, "first_url": f"{path}?{urlencode(kept)}" if cursor is not None else None}

def session_cookie(request: Request[Any, Any, Any], name: str, value: str, *, max_age: int) -> Cookie:
    return Cookie(key=name, value=value, path=COOKIE_PATH, httponly=True, samesite="strict",
                  secure=request.url.scheme == "https", max_age=max_age)

def json_text(value: Any) -> str:
    return msgspec.json.encode(value).decode()
