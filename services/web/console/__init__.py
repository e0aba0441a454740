"""The operator console: sign-in, inbox, moderation, case page with its actions, dashboard, exchange desk.

Every call carries the operator's token, so the node decides scope and roles; a page only offers
the actions the work order allows now (routing's ``allowed_actions``) that the operator's roles pass.
One module per page family; this one only lists the routes.
"""

from __future__ import annotations

from typing import Any

from services.web.console.case import case_act, case_view
from services.web.console.dashboard import bulletin, dashboard, drill
from services.web.console.evaluation import evaluation, evaluation_act
from services.web.console.exchange import exchange_desk, replay
from services.web.console.inbox import inbox, leader_queue, moderate, moderation
from services.web.console.signin import login, login_form, logout

ROUTES: list[tuple[str, str, Any, list[str]]] = [
    ("/console/login", "login_form", login_form, ["GET"]),
    ("/console/login", "login", login, ["POST"]),
    ("/console/logout", "logout", logout, ["POST"]),
    ("/console", "inbox", inbox, ["GET"]),
    ("/console/moderation", "moderation", moderation, ["GET"]),
    ("/console/leader", "leader_queue", leader_queue, ["GET"]),
    ("/console/evaluation", "evaluation", evaluation, ["GET"]),
    ("/console/evaluation", "evaluation_act", evaluation_act, ["POST"]),
    ("/console/moderation/{case_id}", "moderate", moderate, ["POST"]),
    ("/console/case/{case_id}", "case", case_view, ["GET"]),
    ("/console/case/{case_id}", "case_act", case_act, ["POST"]),
    ("/console/dashboard", "dashboard", dashboard, ["GET"]),
    ("/console/drill", "drill", drill, ["GET"]),
    ("/console/bulletin", "bulletin", bulletin, ["GET"]),
    ("/console/exchange", "exchange", exchange_desk, ["GET"]),
    ("/console/exchange/replay", "replay", replay, ["POST"]),
]
