"""What the dashboard's pages need of admin sessions: the cookie's name, the session of a request
(services/merchants/admin_sessions.py keeps them, hashed, in the database), and a constant-time
comparison of form tokens."""

from __future__ import annotations

import hmac

from litestar import Request

from apss.services.container import Services
from apss.services.merchants.admin_sessions import AdminSession

__all__ = ["SESSION_COOKIE", "session_of", "tokens_match"]

SESSION_COOKIE = "apss_admin"


def tokens_match(given: str | None, expected: str | None) -> bool:
    """Constant time; an empty or missing token never matches."""
    if not given or not expected or not isinstance(given, str):
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


async def session_of(request: Request, svc: Services) -> AdminSession | None:
    return await svc.admin_sessions.get(request.cookies.get(SESSION_COOKIE))
