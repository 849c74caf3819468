"""Invoice batch job: rated charges -> draft invoices -> issued invoices (docs/INVOICING.md).

``meterflow invoice --period 2026-01 [--customer C ...] [--issue]`` (cli/billing.py).

The work is set-based SQL in two transactions at most (build, issue), plus one statement that
summarizes the BRIN index of the charge links after the build:

* **build** (one transaction, serialized per period by an advisory lock): every customer with
  charges of the period that no document links yet gets one new draft document in its currency.
  A customer's existing draft for the period is rebuilt (dropped and rebuilt from its charges plus
  the new ones) only when new charges arrived; otherwise it is left untouched — so a re-run with
  nothing new changes nothing. When the customer's standard invoice of the period is already
  issued, the new document is a ``correction`` (net ≥ 0) or a ``credit_note`` (net < 0) pointing at
  it through ``corrects_invoice_id``. Each charge gets one row in ``billing.invoice_line_links``
  (keyed by its narrow ``charge_seq``, written in line order; migration V004).
* **issue** (one transaction): ``billing.issue_drafts()`` locks the year's counter row, then moves
  the drafts to ``issued`` with one UPDATE; the database numbers them ``YYYY-NNNNNN`` without gaps.

Line amounts: a line's amount is ``round(Σ charges of (customer, meter, period) invoiced so far
including this line) − Σ amounts of the issued lines before it``. For the first document that is
simply Σ charges rounded once; for corrections it makes Σ of all documents' lines equal the
cumulative charges rounded once (no drift from rounding each correction separately).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import psycopg

from jobs.progress import Progress, progress_of
from pricing.money import minor_units
from pricing.periods import Period, parse_period

#: Advisory lock key (first half) for building drafts of one period; the second half is the period.
log = logging.getLogger("meterflow.invoicing")
_BUILD_LOCK = 0x6D66696E  # "mfin"


def build_lock_key(period_start: datetime) -> tuple[int, int]:
    """The advisory lock a period's invoice build holds: whatever changes the credit a period's
    documents hold (a build, a void: jobs/batch/payments.py) takes it, so none works from a
    snapshot without the other."""
    return (_BUILD_LOCK, int(period_start.timestamp()) // 86400)

#: Tax is rounded half-up to the currency's minor unit (docs/INVOICING.md).
TAX_ROUNDING_MODE = "ROUND_HALF_UP"
#: Used for a line only when the customer's price book has no version in force in the period.
FALLBACK_ROUNDING_MODE = "ROUND_HALF_UP"


class InvoicingError(RuntimeError):
    """A condition that stops the invoice run, with a message naming what is wrong."""


@dataclass
class InvoiceRunResult:
    period: Period
    charges_invoiced: int = 0          # charges linked by this run (incl. those of rebuilt drafts)
    new_charges: int = 0               # charges no document linked before this run
    drafts_built: int = 0
    drafts_rebuilt: int = 0
    documents: dict[str, int] = field(default_factory=dict)  # kind -> count built now
    issued: list[tuple[int, str]] = field(default_factory=list)
    build_seconds: float = 0.0
    issue_seconds: float = 0.0
    # customers left out of this run, with why (their sums do not fit the documents' columns);
    # everyone else is invoiced
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def charges_per_second(self) -> float:
        return self.charges_invoiced / self.build_seconds if self.build_seconds else 0.0


class _Steps:
    """The steps of a run, reported to a :class:`jobs.progress.Progress`."""

    def __init__(self, total: int, progress: Progress | bool | None, title: str):
        self.progress = progress_of(progress)
        self.title = title
        self.total = total

    def __enter__(self) -> _Steps:
        self.progress.start(self.title, self.total)
        return self

    def step(self, what: str) -> None:
        self.progress.describe(what)

    def done(self) -> None:
        self.progress.advance()

    def __exit__(self, *exc: object) -> None:
        self.progress.finish()


def _timed(conn: psycopg.Connection):
    """conn.execute that logs each statement's duration (METERFLOW_INVOICE_TIMING=1)."""

    def run(query, params=None):
        t = time.perf_counter()
        cur = conn.execute(query, params)
        first = " ".join(str(query).split())[:70]
        log.info("%7.3fs  %s", time.perf_counter() - t, first)
        return cur

    return run


_NEW_WHERE = """c.period_start = %(ps)s
                  AND (%(cust)s::text[] IS NULL OR c.customer_id = ANY (%(cust)s::text[]))
                  AND NOT (c.customer_id = ANY (%(excl)s::text[]))
                  AND NOT EXISTS (SELECT 1 FROM billing.invoice_line_links k
                                   WHERE k.charge_seq = c.charge_seq)"""
_NEW = "billing.rated_charges c WHERE " + _NEW_WHERE
# Per (customer, meter, currency): the sums of the unlinked charges, and their charge_seq band.
_AGG = f"""SELECT c.customer_id, c.meter, c.currency::text AS currency,
                  sum(c.quantity_delta) AS quantity, sum(c.amount) AS amount_precise,
                  count(*) AS charge_count, min(c.charge_seq) AS seq_lo, max(c.charge_seq) AS seq_hi
             FROM {_NEW}
            GROUP BY c.customer_id, c.meter, c.currency"""


# What the documents' columns hold (V002): invoice_lines.quantity numeric(38, 12),
# amount_precise numeric(48, 18), amount / invoices.subtotal, tax, total numeric(38, 6). A
# customer whose sums reach these cannot be invoiced; the others must still be (one overflowing
# customer used to roll back the whole period's run). The contract keeps event quantities below
# 10^12 (schemas/event.py), so this takes more than 10^14 events of one (customer, meter).
_TOO_BIG = """SELECT customer_id,
                     string_agg(meter || ': quantity ' || quantity::text || ', amount ' || amount_precise::text,
                                '; ' ORDER BY meter)
                FROM _inv_agg
               GROUP BY customer_id
              HAVING max(abs(quantity)) >= 1e26 OR max(abs(amount_precise)) >= 1e30
                  OR abs(sum(amount_precise)) >= 1e31
               ORDER BY customer_id"""


class _TooBig(Exception):
    def __init__(self, customers: dict[str, str]) -> None:
        self.customers = customers


def build_drafts(
    conn: psycopg.Connection,
    period: Period,
    customers: Sequence[str] | None = None,
    *,
    progress: Progress | bool | None = None,
    result: InvoiceRunResult | None = None,
    attempts: int = 3,
) -> InvoiceRunResult:
    """Build the draft documents of ``period`` in one transaction (see the module docstring).

    The transaction runs at REPEATABLE READ so that every statement sees the same charges (a
    charge inserted meanwhile by the streaming job waits for the next run); builders of the same
    period queue on a session advisory lock taken before the snapshot. A serialization failure
    (a draft issued concurrently) is retried.
    """
    key = build_lock_key(period.start)
    conn.execute("SELECT pg_advisory_lock(%s, %s)", key)
    failed: dict[str, str] = {}
    try:
        attempt = 1
        while True:
            res = result or InvoiceRunResult(period)
            res.failed = dict(failed)
            try:
                return _build(conn, period, customers, progress, res)
            except _TooBig as e:
                # rolled back: build again without them (they keep their drafts, if any)
                failed.update(e.customers)
                res.documents.clear()
            except psycopg.errors.SerializationFailure:
                if attempt == attempts:
                    raise
                attempt += 1
                res.documents.clear()
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s, %s)", key)


def _build(conn, period: Period, customers, progress: Progress | bool | None, res: InvoiceRunResult):
    cust = list(customers) if customers else None
    p = {"ps": period.start, "pe": period.end, "cust": cust, "excl": sorted(res.failed)}
    t0 = time.perf_counter()
    with _Steps(7, progress, f"invoice {period.label}") as steps, conn.transaction():
        x = _timed(conn) if os.environ.get("METERFLOW_INVOICE_TIMING") else conn.execute
        x("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        x("SET LOCAL work_mem = '256MB'")
        # (a memoize cache keyed by (customer, meter) never hits here: one lookup per line)
        x("SET LOCAL enable_memoize = off")

        steps.step("new charges")
        # one scan of the period's unlinked charges: per (customer, meter, currency) the sums of
        # the lines, and the band of charge_seq they occupy (it bounds the link statement)
        x(f"CREATE TEMP TABLE _inv_agg ON COMMIT DROP AS {_AGG}", p)
        x(
            """CREATE TEMP TABLE _inv_affected ON COMMIT DROP AS
               SELECT customer_id, currency, sum(charge_count) AS n
                 FROM _inv_agg GROUP BY customer_id, currency"""
        )
        x("ANALYZE _inv_affected")
        res.new_charges = int(x("SELECT coalesce(sum(n), 0) FROM _inv_affected").fetchone()[0])
        steps.done()
        if res.new_charges == 0:
            res.build_seconds = time.perf_counter() - t0
            return res
        bad = x(
            """SELECT a.customer_id, a.currency, cu.currency
                 FROM _inv_affected a LEFT JOIN billing.customers cu USING (customer_id)
                WHERE cu.currency IS DISTINCT FROM a.currency
                ORDER BY 1 LIMIT 10"""
        ).fetchall()
        if bad:
            raise InvoicingError(
                "charges whose currency differs from their customer's (or whose customer is "
                "unknown): " + ", ".join(f"{c} charged in {cc}, billed in {bc or '?'}" for c, cc, bc in bad)
            )

        steps.step("drafts to rebuild")
        # This period's drafts of the affected customers are dropped and rebuilt from their charges
        # plus the new ones (once their links are gone, those charges are "not linked" again).
        # (driven by the affected customers: a fresh invoices table has no statistics, and a
        # plan that believes it holds one draft compares every draft with every customer)
        rows = x(
            """SELECT i.invoice_id, i.customer_id
                 FROM _inv_affected a
                 JOIN billing.invoices i ON i.customer_id = a.customer_id
                WHERE i.period_start = %(ps)s AND i.status = 'draft'
                ORDER BY i.invoice_id FOR UPDATE OF i""",
            p,
        ).fetchall()
        stale = [r[0] for r in rows]
        if stale:
            # (ids as bigint[]: psycopg would send small ints as smallint[], and bigint = smallint
            # is not hashed: a linear search of the array per row)
            x("DELETE FROM billing.credit_applications WHERE invoice_id = ANY (%s::bigint[])",
              (stale,))
            # (the range lets the BRIN index of the links find them)
            x(
                """DELETE FROM billing.invoice_line_links
                    WHERE invoice_id BETWEEN %(lo)s AND %(hi)s
                      AND invoice_id = ANY (%(ids)s::bigint[])""",
                {"lo": stale[0], "hi": stale[-1], "ids": stale},
            )
            x("DELETE FROM billing.invoice_lines WHERE invoice_id = ANY (%s::bigint[])", (stale,))
            x("""DELETE FROM billing.invoices
                  WHERE invoice_id = ANY (%s::bigint[]) AND status = 'draft'""", (stale,))
            res.drafts_rebuilt = len(stale)
            # the rebuilt customers' charges are unlinked again: sum them afresh
            rebuilt = sorted({r[1] for r in rows})
            x("DELETE FROM _inv_agg WHERE customer_id = ANY (%s::text[])", (rebuilt,))
            x(f"INSERT INTO _inv_agg {_AGG}", {**p, "cust": rebuilt})
        too_big = x(_TOO_BIG).fetchall()
        if too_big:
            raise _TooBig({c: f"sums too large for an invoice ({what[:300]})" for c, what in too_big})
        steps.done()

        steps.step("customers")
        x(
            """CREATE TEMP TABLE _inv_cust ON COMMIT DROP AS
               SELECT cu.customer_id, cu.currency::text AS currency, cu.tax_region,
                      (SELECT v.rounding_mode FROM billing.price_book_versions v
                        WHERE v.price_book_id = cu.price_book_id AND v.effective_from < %(pe)s
                        ORDER BY v.effective_from DESC LIMIT 1) AS rounding_mode,
                      (SELECT t.rate FROM billing.tax_rates t
                        WHERE t.region = cu.tax_region AND t.effective_from < %(pe)s
                        ORDER BY t.effective_from DESC LIMIT 1) AS tax_rate,
                      (SELECT i.invoice_id FROM billing.invoices i
                        WHERE i.customer_id = cu.customer_id AND i.period_start = %(ps)s
                          AND i.kind = 'standard' AND i.status = 'issued') AS original_id,
                      0::smallint AS scale
                 FROM billing.customers cu
                WHERE cu.customer_id IN (SELECT customer_id FROM _inv_affected)""",
            p,
        )
        currencies = [r[0] for r in x("SELECT DISTINCT currency FROM _inv_cust")]
        scales = []
        for c in currencies:
            try:
                scales.append(minor_units(c))
            except ValueError as e:
                raise InvoicingError(str(e)) from None
        x(
            """UPDATE _inv_cust c SET scale = m.scale
                 FROM unnest(%s::text[], %s::smallint[]) AS m(currency, scale)
                WHERE m.currency = c.currency""",
            (currencies, scales),
        )
        untaxed = x(
            """SELECT customer_id, tax_region FROM _inv_cust
                WHERE tax_region IS NOT NULL AND tax_rate IS NULL ORDER BY 1 LIMIT 10"""
        ).fetchall()
        if untaxed:
            raise InvoicingError(
                f"no tax rate in force before {period.end.isoformat()} for: "
                + ", ".join(f"customer {c} (region {r})" for c, r in untaxed)
            )
        steps.done()

        steps.step("lines")
        # line ids are drawn here so that the charge links can be written in one pass later
        x(
            """CREATE TEMP TABLE _inv_lines ON COMMIT DROP AS
               WITH agg AS (SELECT * FROM _inv_agg),
               prev AS (
                 SELECT l.customer_id, l.meter, sum(l.amount_precise) AS precise, sum(l.amount) AS rounded
                   FROM billing.invoice_lines l
                   JOIN billing.invoices i ON i.invoice_id = l.invoice_id
                  WHERE l.period_start = %(ps)s AND i.status = 'issued'
                    AND l.customer_id IN (SELECT customer_id FROM _inv_affected)
                  GROUP BY l.customer_id, l.meter)
               SELECT nextval(pg_get_serial_sequence('billing.invoice_lines', 'line_id')) AS line_id,
                      a.customer_id, a.meter, c.currency, a.quantity, a.amount_precise,
                      a.charge_count, coalesce(c.rounding_mode, %(fallback)s) AS rounding_mode,
                      billing.round_money(coalesce(prev.precise, 0) + a.amount_precise, c.scale,
                                          coalesce(c.rounding_mode, %(fallback)s))
                        - coalesce(prev.rounded, 0) AS amount
                 FROM agg a
                 JOIN _inv_cust c USING (customer_id)
                 LEFT JOIN prev USING (customer_id, meter)
                ORDER BY a.customer_id, a.meter""",
            {**p, "fallback": FALLBACK_ROUNDING_MODE},
        )
        x("ANALYZE _inv_lines")
        steps.done()

        steps.step("credits and tax")
        x(
            """CREATE TEMP TABLE _inv_docs ON COMMIT DROP AS
               SELECT c.customer_id, c.currency, c.scale, c.tax_region,
                      coalesce(c.tax_rate, 0) AS tax_rate, c.original_id,
                      CASE WHEN c.original_id IS NULL THEN 'standard'
                           WHEN sum(l.amount) < 0 THEN 'credit_note'
                           ELSE 'correction' END AS kind,
                      sum(l.amount) AS subtotal,
                      -- what the period's issued documents took from credits and charged as tax
                      -- (net): a credit note gives back the first and refunds at most the second
                      (SELECT coalesce(sum(i.credits_applied), 0) FROM billing.invoices i
                        WHERE i.customer_id = c.customer_id AND i.period_start = %(ps)s
                          AND i.currency = c.currency AND i.status <> 'draft') AS credits_net,
                      (SELECT coalesce(sum(i.tax), 0) FROM billing.invoices i
                        WHERE i.customer_id = c.customer_id AND i.period_start = %(ps)s
                          AND i.currency = c.currency AND i.status <> 'draft') AS tax_net
                 FROM _inv_lines l JOIN _inv_cust c USING (customer_id)
                GROUP BY c.customer_id, c.currency, c.scale, c.tax_region, c.tax_rate, c.original_id""",
            p,
        )
        # Credits in grant order, each up to what is left of the subtotal; whole minor units.
        # A credit note first gives back the credit the period's documents consumed (negative
        # applications, the credit consumed last given back first), up to its own amount
        # (docs/INVOICING.md "Credit notes").
        x(
            """CREATE TEMP TABLE _inv_credit ON COMMIT DROP AS
               WITH back AS (
                 SELECT a.credit_id, i.customer_id, cr.granted_at, sum(a.amount) AS net,
                        least(-d.subtotal, d.credits_net) AS restore
                   FROM _inv_docs d
                   JOIN billing.invoices i ON i.customer_id = d.customer_id
                   JOIN billing.credit_applications a ON a.invoice_id = i.invoice_id
                   JOIN billing.credits cr ON cr.credit_id = a.credit_id
                  WHERE d.kind = 'credit_note' AND d.credits_net > 0
                    AND i.period_start = %(ps)s AND i.currency = d.currency AND i.status <> 'draft'
                  GROUP BY a.credit_id, i.customer_id, cr.granted_at, d.subtotal, d.credits_net
                 HAVING sum(a.amount) > 0),
               back_ordered AS (
                 SELECT b.*, coalesce(sum(b.net) OVER (
                          PARTITION BY b.customer_id ORDER BY b.granted_at DESC, b.credit_id DESC
                          ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before
                   FROM back b),
               bal AS (
                 SELECT cr.credit_id, cr.customer_id, cr.granted_at,
                        trunc(cr.amount - coalesce((SELECT sum(a.amount)
                                                      FROM billing.credit_applications a
                                                     WHERE a.credit_id = cr.credit_id), 0),
                              d.scale) AS remaining
                   FROM billing.credits cr
                   JOIN _inv_docs d ON d.customer_id = cr.customer_id AND d.currency = cr.currency
                  WHERE cr.granted_at < %(pe)s AND d.subtotal > 0),
               ordered AS (
                 SELECT b.*, coalesce(sum(b.remaining) OVER (
                          PARTITION BY b.customer_id ORDER BY b.granted_at, b.credit_id
                          ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before
                   FROM bal b WHERE b.remaining > 0)
               SELECT o.credit_id, o.customer_id, least(o.remaining, d.subtotal - o.before) AS amount
                 FROM ordered o JOIN _inv_docs d USING (customer_id)
                WHERE d.subtotal - o.before > 0
               UNION ALL
               SELECT b.credit_id, b.customer_id, -least(b.net, b.restore - b.before)
                 FROM back_ordered b
                WHERE b.restore - b.before > 0""",
            p,
        )
        steps.done()

        steps.step("invoices")
        x("CREATE TEMP TABLE _inv_ids (invoice_id bigint, customer_id text) ON COMMIT DROP")
        x(
            """WITH t AS (
                 SELECT d.*, coalesce(cr.applied, 0) AS credits_applied
                   FROM _inv_docs d
                   LEFT JOIN (SELECT customer_id, sum(amount) AS applied FROM _inv_credit
                               GROUP BY customer_id) cr USING (customer_id)),
               tt AS (
                 -- tax on what is not paid by credit; a credit note refunds no more tax than the
                 -- period's documents charged
                 SELECT t.*, CASE WHEN t.kind = 'credit_note'
                                  THEN greatest(billing.round_money((t.subtotal - t.credits_applied)
                                                                    * t.tax_rate, t.scale, %(taxmode)s),
                                                -greatest(t.tax_net, 0))
                                  ELSE billing.round_money((t.subtotal - t.credits_applied) * t.tax_rate,
                                                           t.scale, %(taxmode)s) END AS tax
                   FROM t),
               ins AS (
                 INSERT INTO billing.invoices
                   (customer_id, period_start, period_end, currency, minor_units, kind,
                    corrects_invoice_id, subtotal, credits_applied, tax_region, tax_rate, tax, total)
                 SELECT customer_id, %(ps)s, %(pe)s, currency, scale, kind, original_id, subtotal,
                        credits_applied, tax_region, tax_rate, tax, subtotal - credits_applied + tax
                   FROM tt ORDER BY customer_id
                 RETURNING invoice_id, customer_id, kind)
               INSERT INTO _inv_ids SELECT invoice_id, customer_id FROM ins""",
            {**p, "taxmode": TAX_ROUNDING_MODE},
        )
        x("ANALYZE _inv_ids")
        for kind, n in x("SELECT kind, count(*) FROM _inv_docs GROUP BY kind"):
            res.documents[kind] = res.documents.get(kind, 0) + n
        res.drafts_built = sum(res.documents.values())
        x(
            """INSERT INTO billing.credit_applications (credit_id, invoice_id, amount)
               SELECT cr.credit_id, i.invoice_id, cr.amount
                 FROM _inv_credit cr JOIN _inv_ids i USING (customer_id)"""
        )
        x(
            """INSERT INTO billing.invoice_lines
                 (line_id, invoice_id, customer_id, period_start, meter, currency, quantity,
                  amount_precise, amount, rounding_mode, charge_count)
               OVERRIDING SYSTEM VALUE
               SELECT l.line_id, i.invoice_id, l.customer_id, %(ps)s, l.meter, l.currency,
                      l.quantity, l.amount_precise, l.amount, l.rounding_mode, l.charge_count
                 FROM _inv_lines l JOIN _inv_ids i USING (customer_id)
                ORDER BY l.line_id""",
            p,
        )
        steps.done()

        steps.step("charge links")
        # One pass over the period's unlinked charges, bounded by their charge_seq band (so the
        # "not linked yet" test only looks at links in that band). Written in line order: a
        # line's links share a few heap pages, which is what the BRIN drill-down index needs;
        # the primary key (charge_seq) is filled within the period's narrow band.
        lo, hi = x("SELECT min(seq_lo), max(seq_hi) FROM _inv_agg").fetchone()
        cur = x(
            """INSERT INTO billing.invoice_line_links (charge_seq, line_id, invoice_id)
               SELECT c.charge_seq, l.line_id, i.invoice_id
                 FROM billing.rated_charges c
                 JOIN _inv_lines l ON l.customer_id = c.customer_id AND l.meter = c.meter
                 JOIN _inv_ids i ON i.customer_id = c.customer_id
                WHERE c.period_start = %(ps)s AND c.charge_seq BETWEEN %(lo)s AND %(hi)s
                  AND NOT EXISTS (SELECT 1 FROM billing.invoice_line_links k
                                   WHERE k.charge_seq = c.charge_seq
                                     AND k.charge_seq BETWEEN %(lo)s AND %(hi)s)
                ORDER BY l.line_id, c.charge_seq""",
            {**p, "lo": lo, "hi": hi},
        )
        res.charges_invoiced = cur.rowcount
        expected = x("SELECT coalesce(sum(charge_count), 0) FROM _inv_lines").fetchone()[0]
        if res.charges_invoiced != expected:  # cannot happen in one snapshot; never commit it
            raise InvoicingError(
                f"linked {res.charges_invoiced} charges but the lines sum {expected}: rolled back"
            )
        steps.done()
    # summarize the BRIN ranges just filled, so that a drill-down reads only its line's pages
    # (autovacuum would do it later; until then the new pages are scanned by every look-up)
    conn.execute("SELECT billing.summarize_invoice_links()")
    res.build_seconds = time.perf_counter() - t0
    return res


def issue_drafts(
    conn: psycopg.Connection,
    period: Period | None,
    customers: Sequence[str] | None = None,
    *,
    result: InvoiceRunResult | None = None,
    payment_terms_days: int | None = None,
) -> list[tuple[int, str]]:
    """Issue the drafts of ``period`` (all periods when None) in one transaction.

    ``payment_terms_days`` is the configured default terms (``billing.payment_terms_days``) for
    customers without their own: the database fixes each document's due date at issue (V010).
    """
    t0 = time.perf_counter()
    with conn.transaction():
        if payment_terms_days is not None:
            conn.execute("SELECT set_config('billing.default_payment_terms_days', %s, true)",
                         (str(int(payment_terms_days)),))
        rows = conn.execute(
            "SELECT invoice_id, invoice_number FROM billing.issue_drafts(%s, %s)",
            (period.start if period else None, list(customers) if customers else None),
        ).fetchall()
    issued = [(r[0], r[1]) for r in rows]
    if result is not None:
        result.issued.extend(issued)
        result.issue_seconds += time.perf_counter() - t0
    return issued


def run_invoicing(
    conn: psycopg.Connection,
    period: Period | str,
    customers: Sequence[str] | None = None,
    *,
    issue: bool = False,
    progress: Progress | bool | None = None,
    payment_terms_days: int | None = None,
) -> InvoiceRunResult:
    """Build (and with ``issue`` issue) the documents of ``period``. ``conn`` must be autocommit."""
    if isinstance(period, str):
        period = parse_period(period)
    if not conn.autocommit:
        raise ValueError("run_invoicing needs an autocommit connection (it manages its transactions)")
    res = InvoiceRunResult(period)
    build_drafts(conn, period, customers, progress=progress, result=res)
    if issue:
        issue_drafts(conn, period, customers, result=res, payment_terms_days=payment_terms_days)
    return res


