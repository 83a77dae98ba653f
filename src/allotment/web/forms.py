"""The Account page's forms for delegated administration. Each form posts
``application/x-www-form-urlencoded`` with the login's XSRF token (``_xsrf``); a missing or
wrong one is refused (403) before anything is read. The change itself is made by the same
function as the API's route, so the rules (who may, what the policy file owns) and the audit
entry are the API's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError
from sqlalchemy import select

from allotment.api.routes import accounts as account_routes
from allotment.api.routes import budgets as budget_routes
from allotment.db.tables import Account, BudgetRow, Pool
from allotment.errors import PublicError
from allotment.schemas import AccountCreate, AccountPatch, BudgetIn, MembershipIn
from allotment.web.context import Page, error_page, open_page

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

#: Form bodies are a few fields; anything longer is not ours.
MAX_FORM = 16 * 1024


async def _form(request: Request) -> dict[str, str] | None:
    body = await request.body()
    if len(body) > MAX_FORM:
        return None
    try:
        fields = parse_qs(body.decode("utf-8", "strict"), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        return None
    return {k: v[0].strip() for k, v in fields.items() if v}


async def _handle(
    request: Request,
    path: str,
    change: Callable[[Page, dict[str, str]], Awaitable[str]],
) -> Response:
    page = await open_page(request)
    if not isinstance(page, Page):
        return page
    form = await _form(request)
    if form is None or not page.board.signer.xsrf_ok(page.token, form.get("_xsrf")):
        return error_page(
            page.board,
            403,
            "Form refused",
            "This form's XSRF token is missing or does not match your login (a page of another "
            "site may have sent it, or you logged in again since). Open the page again and "
            "resend the form from there.",
        )
    target = f"{page.board.root}/accounts/{path}"
    try:
        message = await change(page, form)
    except ValidationError as e:
        first = e.errors()[0]
        return page.done(target, f"Not changed: {first.get('msg', 'invalid value')}.", ok=False)
    except PublicError as e:
        return page.done(target, f"Not changed: {e.detail}", ok=False)
    return page.done(target, message)


async def _budget_spec(page: Page, path: str, pool: str | None) -> dict[str, object]:
    """The settings of the budget the form changes, as they are now ({} when it has none)."""
    async with page.state.db.read() as session:
        q = (
            select(BudgetRow.spec)
            .join(Account, Account.id == BudgetRow.account_id)
            .outerjoin(Pool, Pool.id == BudgetRow.pool_id)
            .where(Account.path == path)
            .where(BudgetRow.pool_id.is_(None) if pool is None else Pool.name == pool)
        )
        spec = (await session.execute(q)).scalar_one_or_none() or {}
    return {k: v for k, v in spec.items() if k in BudgetIn.model_fields}


@router.post("/accounts/{path:path}/members/add")
async def add_member(request: Request, path: str) -> Response:
    async def change(page: Page, form: dict[str, str]) -> str:
        user = form.get("user", "")
        role = form.get("role", "member")
        if not user:
            return "Not changed: name the user to add."
        await account_routes.put_member(
            path, user, MembershipIn.model_validate({"role": role}), page.caller, page.state
        )
        return f"{user} is now a {role} of {path}."

    return await _handle(request, path, change)


@router.post("/accounts/{path:path}/members/remove")
async def remove_member(request: Request, path: str) -> Response:
    async def change(page: Page, form: dict[str, str]) -> str:
        user = form.get("user", "")
        await account_routes.delete_member(path, user, page.caller, page.state)
        return f"{user} is no longer a member of {path}."

    return await _handle(request, path, change)


@router.post("/accounts/{path:path}/shares")
async def set_shares(request: Request, path: str) -> Response:
    async def change(page: Page, form: dict[str, str]) -> str:
        child = form.get("account", "")
        raw = form.get("shares", "")
        if not raw.isdigit():
            return "Not changed: shares are a whole number (0 or more)."
        await account_routes.patch_account(
            child, AccountPatch(shares=int(raw)), page.caller, page.state
        )
        return f"{child} now has {int(raw)} shares."

    return await _handle(request, path, change)


@router.post("/accounts/{path:path}/children")
async def create_child(request: Request, path: str) -> Response:
    async def change(page: Page, form: dict[str, str]) -> str:
        raw = form.get("shares", "1") or "1"
        if not raw.isdigit():
            return "Not created: shares are a whole number (0 or more)."
        body = AccountCreate.model_validate(
            {
                "name": form.get("name", ""),
                "parent": path,
                "shares": int(raw),
                "description": form.get("description", ""),
            }
        )
        created = await account_routes.create_account(body, page.caller, page.state)
        plural = "" if body.shares == 1 else "s"
        return f"Created {created.path} with {body.shares} share{plural}."

    return await _handle(request, path, change)


@router.post("/accounts/{path:path}/budget")
async def set_budget(request: Request, path: str) -> Response:
    async def change(page: Page, form: dict[str, str]) -> str:
        try:
            amount = float(form.get("amount", ""))
        except ValueError:
            return "Not changed: the amount is a number (in the currency)."
        period = form.get("period", "month") or "month"
        pool = form.get("pool") or None
        # Only the amount and period change: the budget's other settings (alerts only, step
        # down, grace, overdraft) stay what they are.
        kept = await _budget_spec(page, path, pool)
        body = BudgetIn.model_validate({**kept, "amount": amount, "period": period})
        out = await budget_routes.put_budget(path, body, page.caller, page.state, pool=pool)
        where = f" on {out.pool}" if out.pool else " across all pools"
        return f"{out.account} now has a budget of {page.money(round(out.amount * 1_000_000))} per {out.period}{where}."

    return await _handle(request, path, change)
