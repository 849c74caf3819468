"""Documents people read: invoices, corrections, credit notes and dunning reminders as HTML
(jinja2 templates in ``templates/``) and PDF (WeasyPrint, which lays out the same HTML with
Debian's pango; no hand-built PDF). Reads Postgres, returns text/bytes; printing and files are
the CLI's (cli/documents.py). docs/INVOICING.md, "Documents".

Figures are the issued document's own (never recomputed): lines, subtotal, credits, tax, total,
due date. A line's quantity is what it bills: for a max meter the period's peak (or, on a
correction, the peak's move), not the sum of window peaks stored on the line. Two things are
derived for the reader:

* the tier breakdown in words, from the customer's price book version in force at the end of
  the period, for the line's cumulative quantity (for a first invoice: the line's quantity);
  when the price book cannot be read (or prices the meter no more) the line says so instead;
* for a correction or credit note, per line: what the earlier documents of the period billed,
  what is billed in total now, and the change (= the line's amount).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from functools import cache
from typing import Any

import psycopg

KIND_TITLE = {"standard": "Invoice", "correction": "Correction invoice", "credit_note": "Credit note"}


class DocumentNotFound(LookupError):
    pass


@cache
def _env():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("jobs.batch.render", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env


def money(d: Decimal | None, scale: int) -> str:
    """1234.5 -> '1,234.50' at the currency's minor units (the stored value is already rounded)."""
    if d is None:
        return ""
    q = Decimal(1).scaleb(-scale)
    return f"{d.quantize(q):,.{scale}f}"


def qty(d: Decimal) -> str:
    """A quantity without trailing zeros: 1234.500000000000 -> '1,234.5'."""
    n = d.normalize()
    if n == n.to_integral_value():
        return f"{int(n):,}"
    s = format(n, "f")
    whole, frac = s.split(".")
    return f"{int(whole):,}.{frac}" if whole not in ("-0",) else s


def unit_price(d: Decimal, scale: int) -> str:
    """A unit price with at least the currency's decimals (0.1 -> '0.10', 0.0015 stays)."""
    exp = d.normalize().as_tuple().exponent
    return format(d.quantize(Decimal(1).scaleb(min(-scale, exp if isinstance(exp, int) else 0))), "f")


@dataclass(frozen=True)
class Seller:
    name: str
    address: tuple[str, ...] = ()
    tax_id: str | None = None
    email: str | None = None

    @classmethod
    def from_settings(cls, settings) -> Seller:
        s = settings.billing.seller
        return cls(s.name, tuple(s.address), s.tax_id, s.email)


def _words(tiers: list[dict], scale: int, currency: str) -> str | None:
    """Tier lines (``Line.to_json()`` shape: from, units, unit_price, amount[, packages,
    package_size]) in words: 'first 1,000 at 0.10 USD each = 100.00; next 234 at 0.08 …'."""
    used = [t for t in tiers if Decimal(str(t["units"])) > 0]
    parts = []
    for i, t in enumerate(used):
        units, price, amount = (Decimal(str(t[k])) for k in ("units", "unit_price", "amount"))
        if t.get("packages") is not None:
            parts.append(f"{qty(units)} units in {qty(Decimal(str(t['packages'])))} package(s) of "
                         f"{qty(Decimal(str(t['package_size'])))} at {unit_price(price, scale)} "
                         f"{currency} per package = {money(amount, scale)}")
            continue
        lead = ("all" if len(used) == 1 else
                "first" if i == 0 and Decimal(str(t.get("from", 0))) == 0 else "next")
        parts.append(f"{lead} {qty(units)} at {unit_price(price, scale)} {currency} each "
                     f"= {money(amount, scale)}")
    return "; ".join(parts) or None


def _tiers_from_charge(calc: dict | None, scale: int, currency: str) -> str | None:
    """For a ``max`` meter, the breakdown the rater wrote into the line's latest charge
    (``calculation.tiers`` = the period's rate on its maximum after that charge). For ``sum`` and
    ``count`` meters a charge's tiers are its window's share only, so None: the caller prices
    the period's quantity from the price book instead."""
    if not calc or calc.get("aggregation") != "max" or not isinstance(calc.get("tiers"), list):
        return None
    words = _words(calc["tiers"], scale, currency)
    peak = (calc.get("max") or {}).get("after") or {}
    if words and peak.get("quantity") is not None:
        return f"priced on the period's maximum, {qty(Decimal(str(peak['quantity'])))}: {words}"
    return words


def _tiers_in_words(conn, books: dict, price_book_id: str, meter: str, quantity: Decimal, at,
                    scale: int, currency: str) -> str | None:
    """'first 1,000 at 0.10 = 100.00; next 234 at 0.08 = 18.72' (None if not available)."""
    try:
        from pricing.quote import quote
        from sinks.pricebook_store import read_price_book

        if price_book_id not in books:  # (read once per document)
            books[price_book_id] = read_price_book(conn, price_book_id)
        book = books[price_book_id]
        q = quote(book, meter, quantity, at)
    except Exception as e:  # noqa: BLE001 - a document must render even without its price book
        import logging
        logging.getLogger(__name__).info("no tier breakdown for %s/%s: %s", price_book_id, meter, e)
        return None
    return _words([ln.to_json() for ln in q.result.lines], scale, currency) or (
        f"{qty(quantity)} units, nothing to charge")


# What a line bills (V009's billed_quantity_delta of its charges: for a max meter the move of the
# period's peak, not Σ of window peaks), or its stored quantity for charges from before V009.
_BILLED = """coalesce((SELECT sum(c.billed_quantity_delta) FROM billing.invoice_line_links k
                        JOIN billing.rated_charges c ON c.charge_seq = k.charge_seq
                       WHERE k.line_id = {line}.line_id), {line}.quantity)"""


def load_document(conn: psycopg.Connection, number: str) -> dict[str, Any]:
    """Everything a rendered document shows, read in one snapshot."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        cur = conn.execute(
            """SELECT i.*, o.invoice_number AS corrects_number, o.issued_at AS corrects_issued_at,
                      c.name AS customer_name, c.price_book_id, c.tax_region AS customer_region
                 FROM billing.invoices i
                 JOIN billing.customers c USING (customer_id)
                 LEFT JOIN billing.invoices o ON o.invoice_id = i.corrects_invoice_id
                WHERE i.invoice_number = %s AND i.status = 'issued'""",
            (number.strip(),),
        )
        row = cur.fetchone()
        if row is None:
            raise DocumentNotFound(f"no issued invoice numbered {number!r}")
        doc = dict(zip([c.name for c in cur.description or ()], row, strict=True))
        scale = doc["minor_units"]
        cur = conn.execute(
            f"""SELECT l.meter, {_BILLED.format(line="l")} AS quantity, l.amount,
                      (SELECT c.calculation FROM billing.invoice_line_links k
                         JOIN billing.rated_charges c ON c.charge_seq = k.charge_seq
                        WHERE k.line_id = l.line_id AND k.invoice_id = l.invoice_id
                        ORDER BY c.charge_seq DESC LIMIT 1) AS calculation,
                      (SELECT coalesce(sum({_BILLED.format(line="p")}), 0)
                         FROM billing.invoice_lines p
                         JOIN billing.invoices pi ON pi.invoice_id = p.invoice_id
                        WHERE p.customer_id = l.customer_id AND p.meter = l.meter
                          AND p.period_start = l.period_start AND pi.status = 'issued'
                          AND p.invoice_id < l.invoice_id) AS quantity_before,
                      (SELECT coalesce(sum(p.amount), 0) FROM billing.invoice_lines p
                         JOIN billing.invoices pi ON pi.invoice_id = p.invoice_id
                        WHERE p.customer_id = l.customer_id AND p.meter = l.meter
                          AND p.period_start = l.period_start AND pi.status = 'issued'
                          AND p.invoice_id < l.invoice_id) AS amount_before
                 FROM billing.invoice_lines l WHERE l.invoice_id = %s ORDER BY l.meter""",
            (doc["invoice_id"],),
        )
        lines = []
        books: dict[str, Any] = {}
        at = doc["period_end"] - timedelta(microseconds=1)
        for meter, quantity, amount, calc, q_before, a_before in cur.fetchall():
            total_q = q_before + quantity
            cur_code = doc["currency"].strip()
            lines.append({
                "meter": meter,
                "quantity": qty(quantity),
                "amount": money(amount, scale),
                # the rater's own breakdown; else the price book's for the period's quantity
                "tiers": _tiers_from_charge(calc, scale, cur_code) or _tiers_in_words(
                    conn, books, doc["price_book_id"], meter, total_q, at, scale, cur_code),
                "cumulative_quantity": qty(total_q),
                "before": money(a_before, scale),
                "now": money(a_before + amount, scale),
                "change": ("+" if amount > 0 else "") + money(amount, scale),
            })
        credits = conn.execute(
            """SELECT a.credit_id, a.amount, cr.description FROM billing.credit_applications a
                 JOIN billing.credits cr USING (credit_id) WHERE a.invoice_id = %s
                ORDER BY a.credit_id""",
            (doc["invoice_id"],),
        ).fetchall()
        void = conn.execute(
            """SELECT i.invoice_number FROM billing.invoice_events e
                 JOIN billing.invoices i ON i.invoice_id = e.invoice_id
                WHERE e.kind = 'void' AND e.credit_note_id = %s""", (doc["invoice_id"],)).fetchone()
    doc["lines"] = lines
    doc["credit_lines"] = [{"credit_id": c, "amount": money(a, scale), "description": d}
                           for c, a, d in credits]
    doc["voids_number"] = void[0] if void else None
    return doc


def _context(doc: dict[str, Any], seller: Seller) -> dict[str, Any]:
    scale = doc["minor_units"]
    cur = doc["currency"].strip()
    credit_note = doc["kind"] == "credit_note"
    return {
        "title": KIND_TITLE[doc["kind"]],
        "kind": doc["kind"],
        "number": doc["invoice_number"],
        "issued_on": doc["issued_at"].date().isoformat(),
        "due_date": doc["due_date"].isoformat(),
        "terms": doc["payment_terms_days"],
        "period": f"{doc['period_start'].date().isoformat()} to "
                  f"{(doc['period_end'] - timedelta(days=1)).date().isoformat()}",
        "currency": cur,
        "seller": seller,
        "customer": {"id": doc["customer_id"], "name": doc["customer_name"] or doc["customer_id"],
                     "tax_region": doc["customer_region"]},
        "corrects": doc["corrects_number"],
        "voids": doc["voids_number"],
        "lines": doc["lines"],
        "credit_lines": doc["credit_lines"],
        "subtotal": money(doc["subtotal"], scale),
        "credits": money(doc["credits_applied"], scale),
        "tax_rate": f"{(doc['tax_rate'] * 100).normalize():f}",
        "tax": money(doc["tax"], scale),
        "total": money(doc["total"], scale),
        "refund_due": money(-doc["total"], scale) if credit_note else None,
    }


def render_html(doc: dict[str, Any], seller: Seller) -> str:
    return _env().get_template("invoice.html.j2").render(**_context(doc, seller))


def html_to_pdf(html: str) -> bytes:
    import logging

    from weasyprint import HTML  # type: ignore[import-untyped]

    logging.getLogger("fontTools").setLevel(logging.WARNING)
    return HTML(string=html).write_pdf()


def render_invoice(conn: psycopg.Connection, number: str, fmt: str, seller: Seller) -> bytes:
    """The document ``number`` as ``html`` (UTF-8 bytes) or ``pdf``."""
    if fmt not in ("html", "pdf"):
        raise ValueError(f"format {fmt!r} must be html or pdf")
    html = render_html(load_document(conn, number), seller)
    return html.encode("utf-8") if fmt == "html" else html_to_pdf(html)


def period_numbers(conn: psycopg.Connection, period_start) -> list[str]:
    return [r[0] for r in conn.execute(
        """SELECT invoice_number FROM billing.invoices
            WHERE period_start = %s AND status = 'issued' ORDER BY invoice_number""",
        (period_start,))]


def render_reminder(*, step: str, number: str, customer: str, due_date: date, as_of: date,
                    open_amount: str, currency: str, days_overdue: int, seller: Seller) -> str:
    """A dunning reminder (HTML)."""
    return _env().get_template("reminder.html.j2").render(
        step=step, step_title=step.replace("_", " ").capitalize(), number=number,
        customer=customer, due_date=due_date.isoformat(), as_of=as_of.isoformat(),
        open_amount=open_amount, currency=currency, days_overdue=days_overdue, seller=seller)
