"""Pages served by APSS itself: the hosted checkout page, the sandbox payer page, the embed script
(/js/apss.js) and the admin dashboard. `WEB_HANDLERS` is every route handler of this package, for app.py to register."""

from apss.web.admin import ADMIN_HANDLERS
from apss.web.embed import embed_script
from apss.web.pages import (
    checkout_page,
    checkout_status,
    home,
    sandbox_pay_action,
    sandbox_pay_page,
)

__all__ = ["WEB_HANDLERS"]

WEB_HANDLERS = [home, checkout_page, checkout_status, sandbox_pay_page, sandbox_pay_action, embed_script, *ADMIN_HANDLERS]
