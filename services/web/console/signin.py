"""Operator sign-in (password or operator token) and sign-out: the signed session cookie."""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.responses import Response

from services.common.errors import DomainError
from services.common.security import issue_token, verify_token
from services.web.app import Page
from services.web.session import Operator


def login_form(page: Page) -> Response:
    return page.render("console/login.html", errors={}, values={})


def login(page: Page) -> Response:
    gw = page.gateway
    token = page.field("token")
    operator: Operator | None = None
    errors: dict[str, str] = {}
    if token:
        if gw.token_key is None:
            errors["token"] = "本节点未配置令牌密钥，请使用账号密码登录。"
        else:
            try:
                operator = Operator(token=token, principal=verify_token(gw.token_key, token))
            except DomainError:
                errors["token"] = "令牌无效或已过期。"
    else:
        account = gw.accounts.authenticate(page.field("username"), page.form.get("password", ""))
        if account is None:
            errors["password"] = "账号或密码不正确。"
        else:
            ttl = gw.settings.session_ttl_s
            # Without a token key (security off at the node) the token only carries the claims.
            key = gw.token_key or gw.signer.key
            minted = issue_token(
                key, subject=account.username, node=account.node, unit=account.unit, roles=account.roles, ttl_s=ttl
            )
            operator = Operator(token=minted, principal=verify_token(key, minted), display_name=account.display_name)
    if operator is None:
        return page.render("console/login.html", errors=errors, values={"username": page.field("username")})
    ttl = max(60, min(gw.settings.session_ttl_s, operator.principal.expires - int(datetime.now(UTC).timestamp())))
    page.cookies.append((gw.cookie("session"), gw.signer.dumps("session", operator.to_cookie(), ttl_s=ttl), ttl))
    return page.redirect("/console")


def logout(page: Page) -> Response:
    page.cookies.append((page.gateway.cookie("session"), "", 0))
    page.flash("您已安全退出。")
    return page.redirect("/console/login")
