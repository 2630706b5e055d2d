"""The usage page: node-hours and core-hours per pool and job from the usage ledger, and their
cost where the data dir's prices.json prices the size (shoal/service/prices.py)."""

from __future__ import annotations

from shoal.service import ledger, prices
from shoal.service.context import Context
from shoal.web.shared import BadInput, Page, View


def usage_page(ctx: Context, view: View) -> Page:
    after = view.query.get("after") or None
    if after is not None and (len(after) > 64 or not after.isprintable()):
        raise BadInput("after must be a job id.", values={"Name": "after"})
    price_error = None
    price_list: prices.Prices = {}
    if ctx.prices_file is not None:
        try:
            price_list = prices.load(ctx.prices_file, missing_ok=True)
        except prices.PricesError as exc:
            # The page still shows the hours; the message names the file, which only the
            # operator who wrote it can mend.
            price_error = str(exc)
    answer = prices.priced(ledger.usage(ctx, after), price_list)
    return Page("usage.html", {"usage": answer, "priced": bool(price_list), "price_error": price_error,
                               "after": after})
