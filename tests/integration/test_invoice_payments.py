"""Issue 17 on real PostgreSQL: due dates fixed at issue, payments (idempotent, overpayment to
credit, bad input refused with nothing changed), statement import, void, write-off, refunds, and
the status view agreeing with the pure billing.status rules."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from typer.testing import CliRunner

from billing.status import (
    Document,
    Fact,
    FactKind,
    absorb_credit_notes,
    balance_before_credit_notes,
    document_state,
)
from jobs.batch.invoicing import run_invoicing
from jobs.batch.payments import (
    LifecycleError,
    PaymentIn,
    import_statement,
    mark_sent,
    record_payment,
    record_refund,
    void_invoice,
    write_off,
)
from sinks.db import connect
from sinks.migrate import MIGRATIONS_DIR, migrate
from tests.integration.dbutil import (
    add_usage,
    admin_connect,
    cli_env,
    seed_credit,
    seed_customer,
    seed_price_book,
    seed_tax_rate,
    tiered,
)

pytestmark = pytest.mark.integration

D = Decimal
JAN = datetime(2026, 1, 1, tzinfo=UTC)
W = JAN + timedelta(days=4, hours=10)
PRICE = tiered((None, "0.10"))  # 0.10 per call
TODAY = datetime.now(UTC).date()


@pytest.fixture(scope="module")
def seed():
    """Seeds each test's database (``conn`` connects to it)."""

    def seed(c) -> None:
        seed_price_book(c, "pb", "USD")
        seed_tax_rate(c, "EU-DE", "0.19", datetime(2020, 1, 1, tzinfo=UTC))

    return seed


def _invoice(conn, cid, calls=1000, region=None, terms=None, default_terms=None) -> str:
    """An issued January invoice of ``calls`` × 0.10 USD (+19 % with region EU-DE)."""
    seed_customer(conn, cid, "pb", "USD", region)
    if terms is not None:
        conn.execute("UPDATE billing.customers SET payment_terms_days = %s WHERE customer_id = %s",
                     (terms, cid))
    add_usage(conn, cid, "api_calls", W, [calls], PRICE)
    run_invoicing(conn, "2026-01", [cid], issue=True, payment_terms_days=default_terms)
    return conn.execute("SELECT invoice_number FROM billing.invoices WHERE customer_id = %s "
                        "ORDER BY invoice_id DESC LIMIT 1", (cid,)).fetchone()[0]


def _row(conn, number, as_of=TODAY):
    return conn.execute(
        "SELECT status, open_amount, paid, credited FROM billing.document_status(%s) "
        "WHERE invoice_number = %s", (as_of, number)).fetchone()


def _facts(conn):
    return {t: conn.execute(f"SELECT * FROM billing.{t} ORDER BY 1").fetchall()
            for t in ("payments", "invoice_events", "credits", "invoices", "credit_applications")}


# ------------------------------------------------------------------------------- terms

def test_due_date_is_fixed_at_issue_from_the_customers_terms_or_the_default(conn):
    a = _invoice(conn, "net14", terms=14)
    b = _invoice(conn, "default21", default_terms=21)
    c = _invoice(conn, "plain")  # no terms passed: the database's fallback, 30
    rows = dict((r[0], r[1:]) for r in conn.execute(
        "SELECT invoice_number, payment_terms_days, due_date, (issued_at AT TIME ZONE 'UTC')::date "
        "FROM billing.invoices"))
    assert rows[a][0] == 14 and rows[a][1] == rows[a][2] + timedelta(days=14)
    assert rows[b][0] == 21 and rows[b][1] == rows[b][2] + timedelta(days=21)
    assert rows[c][0] == 30 and rows[c][1] == rows[c][2] + timedelta(days=30)
    # later terms do not move an issued due date; drafts have none
    conn.execute("UPDATE billing.customers SET payment_terms_days = 60 WHERE customer_id = 'net14'")
    assert conn.execute("SELECT due_date FROM billing.invoices WHERE invoice_number = %s",
                        (a,)).fetchone()[0] == rows[a][1]
    add_usage(conn, "net14", "api_calls", W + timedelta(hours=1), [10], PRICE)
    run_invoicing(conn, "2026-01", ["net14"])
    assert conn.execute("SELECT due_date FROM billing.invoices WHERE status = 'draft'").fetchone() == (None,)
    # the correction gets its own terms and due date at its issue
    run_invoicing(conn, "2026-01", ["net14"], issue=True)
    kind, terms = conn.execute("SELECT kind, payment_terms_days FROM billing.invoices "
                               "ORDER BY invoice_id DESC LIMIT 1").fetchone()
    assert (kind, terms) == ("correction", 60)
    with pytest.raises(psycopg.errors.RestrictViolation):
        conn.execute("UPDATE billing.invoices SET due_date = due_date + 1 WHERE invoice_number = %s", (a,))


def test_migration_gives_invoices_issued_before_it_the_default_due_date(tmp_path):
    old = tmp_path / "migrations"
    old.mkdir()
    for f in sorted(MIGRATIONS_DIR.glob("V*.sql")):
        if int(f.name[1:4]) < 10:
            shutil.copy(f, old / f.name)
    # (fresh_database applies every migration: this database is built by hand up to V009)
    import secrets

    from psycopg import sql

    from schemas.config import load_settings

    base = load_settings()
    name = f"mf_test_{secrets.token_hex(6)}"
    admin_info = f"host={base.postgres.host} port={base.postgres.port} dbname=postgres user=postgres"
    with psycopg.connect(admin_info, autocommit=True) as a:
        a.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    s = base.model_copy(update={"postgres": base.postgres.model_copy(update={"database": name})})
    try:
        with admin_connect(s, autocommit=True) as c:
            migrate(c, old)
            seed_price_book(c, "pb", "USD")
            # (SQL, not the store: the store writes today's columns, this schema is V009's)
            c.execute("INSERT INTO billing.customers (customer_id, price_book_id, currency)"
                      " VALUES ('old', 'pb', 'USD')")
            add_usage(c, "old", "api_calls", W, [100], PRICE)
            run_invoicing(c, "2026-01", issue=True)
            migrate(c)
            terms, due, issued = c.execute(
                "SELECT payment_terms_days, due_date, (issued_at AT TIME ZONE 'UTC')::date "
                "FROM billing.invoices").fetchone()
            assert (terms, due) == (30, issued + timedelta(days=30))
    finally:
        with psycopg.connect(admin_info, autocommit=True) as a:
            a.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# ------------------------------------------------------------------------------- payments

def test_partial_then_full_payment_and_overpayment_becomes_a_credit(conn):
    n = _invoice(conn, "a", region="EU-DE")  # 100.00 + 19.00 tax
    assert _row(conn, n)[:2] == ("issued", D("119.00"))
    assert mark_sent(conn, n, TODAY) == "sent"
    r = record_payment(conn, PaymentIn(n, D("19.00"), "usd", TODAY, "card", "psp-1"))
    assert (r.applied, r.to_credit, r.status, r.open_amount) == (D("19"), 0, "partially_paid", D("100"))
    r = record_payment(conn, PaymentIn(n, D("150.00"), "USD", TODAY, "bank_transfer", "bank-2"))
    assert (r.applied, r.to_credit, r.status, r.open_amount) == (D("100"), D("50"), "paid", 0)
    assert conn.execute("SELECT customer_id, amount FROM billing.credits WHERE credit_id = %s",
                        (r.credit_id,)).fetchone() == ("a", D("50"))
    # the same reference with the same values: nothing new
    before = _facts(conn)
    again = record_payment(conn, PaymentIn(n, D("150.00"), "USD", TODAY, "bank_transfer", "bank-2"))
    assert not again.recorded and _facts(conn) == before
    # the overpayment credit is consumed by the next invoice (existing credit code path)
    # (credits count for periods ending after their grant: this month's)
    add_usage(conn, "a", "api_calls", datetime(TODAY.year, TODAY.month, 1, tzinfo=UTC), [100], PRICE)
    run_invoicing(conn, f"{TODAY.year:04d}-{TODAY.month:02d}", ["a"])
    assert conn.execute("SELECT credits_applied FROM billing.invoices WHERE status = 'draft'"
                        ).fetchone()[0] == D("10.00")


def test_an_overpayment_credit_recovers_the_balance_alert_in_the_payments_transaction(conn):
    from billing.alerts import rules_from_data
    from sinks.alerts import AlertRules, evaluate_alerts, store_rules

    n = _invoice(conn, "a")  # 100.00
    store_rules(conn, rules_from_data({"rules": [
        {"rule_id": "low", "kind": "balance", "customer_id": "a", "levels": {"warning": "10"}}]}))
    with conn.transaction():
        evaluate_alerts(conn, AlertRules().refresh(conn), ["a"])  # no credit: balance 0
    alerts = "SELECT level, status, value FROM billing.alerts WHERE customer_id = 'a' ORDER BY created_at"
    assert conn.execute(alerts).fetchall() == [("warning", "firing", D(0))]
    record_payment(conn, PaymentIn(n, D("150.00"), "USD", TODAY, "bank_transfer", "bank-9"))
    assert conn.execute(alerts).fetchall() == [("warning", "firing", D(0)), ("warning", "ok", D(50))]


BAD = [
    ("unknown invoice", dict(invoice_number="2026-999999"), "no issued invoice"),
    ("wrong currency", dict(currency="EUR"), "is in USD, the payment in EUR"),
    ("negative amount", dict(amount=D("-5")), "must be positive"),
    ("zero amount", dict(amount=D("0")), "must be positive"),
    ("too many decimals", dict(amount=D("1.001")), "more decimals than USD"),
    ("reference reused with another amount", dict(amount=D("7.00"), external_ref="ref-1"),
     "already recorded with amount 5.00"),
    ("future date", dict(paid_on=TODAY + timedelta(days=3)), "in the future"),
]


@pytest.mark.parametrize(("name", "change", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_payments_are_refused_and_change_nothing(conn, name, change, message):
    n = _invoice(conn, "a")
    record_payment(conn, PaymentIn(n, D("5.00"), "USD", TODAY, "card", "ref-1"))
    before = _facts(conn)
    fields = dict(invoice_number=n, amount=D("5.00"), currency="USD", paid_on=TODAY,
                  method="card", external_ref="ref-2")
    fields.update(change)
    with pytest.raises(LifecycleError, match=message):
        record_payment(conn, PaymentIn(**fields))
    assert _facts(conn) == before


def test_payments_cli_refuses_bad_input_with_one_line(settings, conn, monkeypatch):
    from cli.payments import payments_app

    n = _invoice(conn, "a")
    for k, v in cli_env(settings).items():
        monkeypatch.setenv(k, v)
    before = _facts(conn)
    runner = CliRunner()
    for args, text in [
        (["--invoice", "2026-999999", "--amount", "5", "--currency", "USD"], "no issued invoice"),
        (["--invoice", n, "--amount", "-5", "--currency", "USD"], "must be positive"),
        (["--invoice", n, "--amount", "abc", "--currency", "USD"], "not a decimal number"),
        (["--invoice", n, "--amount", "5", "--currency", "EUR"], "the payment in EUR"),
    ]:
        res = runner.invoke(payments_app, ["record", *args, "--reference", "r"])
        assert res.exit_code == 1, res.output
        assert text in res.output and len(res.output.strip().splitlines()) == 1
        assert "Traceback" not in res.output
    assert _facts(conn) == before
    res = runner.invoke(payments_app, ["record", "--invoice", n, "--amount", "100",
                                       "--currency", "USD", "--reference", "r"])
    assert res.exit_code == 0 and "paid" in res.output


def test_bank_statement_import_matches_invoice_numbers_and_reports_the_rest(conn, tmp_path):
    a = _invoice(conn, "a")
    b = _invoice(conn, "b")
    f = tmp_path / "statement.csv"
    f.write_text(
        "Date,Amount,Currency,Reference,Remittance\n"
        f"{TODAY},100.00,USD,tx-1,Invoice {a} thanks\n"
        f"{TODAY},40.00,USD,tx-2,payment for inv.{b}\n"
        f"{TODAY},12.00,USD,tx-3,no number here\n"
        f"{TODAY},12.00,USD,tx-4,2099-000001\n", encoding="utf-8")
    res = import_statement(conn, f)
    assert [r.invoice_number for r in res.recorded] == [a, b]
    assert [(n, ref) for n, ref, _ in res.unmatched] == [(4, "tx-3"), (5, "tx-4")]
    assert _row(conn, a)[:2] == ("paid", 0) and _row(conn, b)[:2] == ("partially_paid", D("60"))
    # importing the same statement again records nothing new
    again = import_statement(conn, f)
    assert (len(again.recorded), len(again.already)) == (0, 2)
    # one bad matched row refuses the whole file
    bad = tmp_path / "bad.csv"
    bad.write_text("date,amount,currency,reference,remittance\n"
                   f"{TODAY},10.00,USD,tx-5,{b}\n{TODAY},10.00,EUR,tx-6,{b}\n", encoding="utf-8")
    before = _facts(conn)
    with pytest.raises(LifecycleError, match=r"bad.csv:3: .*EUR.*nothing imported"):
        import_statement(conn, bad)
    assert _facts(conn) == before
    with pytest.raises(LifecycleError, match="missing column"):
        f.write_text("date,amount\n", encoding="utf-8")
        import_statement(conn, f)


# ------------------------------------------------------------------------------- void, write-off, refund

def test_void_issues_a_credit_note_for_the_open_amount_and_links_it(conn):
    n = _invoice(conn, "a", region="EU-DE")  # 119.00 incl. 19.00 tax
    record_payment(conn, PaymentIn(n, D("59.50"), "USD", TODAY, "card", "p1"))
    v = void_invoice(conn, n, TODAY, note="customer cancelled")
    assert v.amount == D("59.50") and v.credit_note_number
    cn = conn.execute(
        "SELECT kind, corrects_invoice_id, subtotal, tax, total, due_date IS NOT NULL FROM "
        "billing.invoices WHERE invoice_number = %s", (v.credit_note_number,)).fetchone()
    orig_id = conn.execute("SELECT invoice_id FROM billing.invoices WHERE invoice_number = %s",
                           (n,)).fetchone()[0]
    assert cn == ("credit_note", orig_id, D("-50.00"), D("-9.50"), D("-59.50"), True)
    assert _row(conn, n)[:2] == ("void", 0)
    assert _row(conn, v.credit_note_number)[:2] == ("paid", 0)  # absorbed by the voided invoice
    assert conn.execute("SELECT credit_note_id FROM billing.invoice_events WHERE kind = 'void'"
                        ).fetchone()[0] is not None
    with pytest.raises(LifecycleError, match="already void"):
        void_invoice(conn, n, TODAY)
    with pytest.raises(LifecycleError, match="is a credit note"):
        void_invoice(conn, v.credit_note_number, TODAY)


@dataclass
class VoidCase:
    credits: list[str]          # USD credits granted before January, in this order
    paid: str | None = None     # paid before the void
    region: str | None = "EU-DE"
    # the standard invoice (credits_applied, tax, total) and the void's credit note
    # (subtotal, credits_applied, tax, total); credit remaining per credit after the void
    standard: tuple[str, str, str] = ("0", "19.00", "119.00")
    void: tuple[str, str, str, str] = ("-100.00", "0", "-19.00", "-119.00")
    remaining: list[str] = field(default_factory=list)


# 1,000 calls × 0.10 = 100.00; 19 % tax (EU-DE) on what credit did not pay
VOID_CASES = {
    "fully credit-funded": VoidCase(
        ["150"], standard=("100.00", "0", "0"), void=("-100.00", "-100.00", "0", "0"),
        remaining=["150"]),
    "fully credit-funded by two credits (the last consumed given back first)": VoidCase(
        ["60", "50"], standard=("100.00", "0", "0"), void=("-100.00", "-100.00", "0", "0"),
        remaining=["60", "50"]),
    # open 107.10 cancelled, 10.00 of credit back, the 17.10 of tax charged refunded
    "partly credit-funded, unpaid": VoidCase(
        ["10"], standard=("10.00", "17.10", "107.10"),
        void=("-100.00", "-10.00", "-17.10", "-107.10"), remaining=["10"]),
    # 50.00 paid: open 57.10, its tax share 57.10 × 17.10 / 107.10 = 9.12
    "partly credit-funded, partly paid": VoidCase(
        ["10"], paid="50.00", standard=("10.00", "17.10", "107.10"),
        void=("-57.98", "-10.00", "-9.12", "-57.10"), remaining=["10"]),
    "no credit, unpaid (as before)": VoidCase([]),
    "no credit, no tax, partly paid (as before)": VoidCase(
        [], paid="30.00", region=None, standard=("0", "0", "100.00"),
        void=("-70.00", "0", "0", "-70.00")),
}


def _credit_invoice(conn, cid, case) -> str:
    seed_customer(conn, cid, "pb", "USD", case.region)
    for i, amount in enumerate(case.credits):
        seed_credit(conn, f"{cid}-cr{i}", cid, "USD", amount, JAN - timedelta(days=10 - i))
    return _invoice(conn, cid, region=case.region)


def _credits(conn, cid):
    """(remaining per credit in grant order, Σ applications per credit)."""
    rows = conn.execute(
        """SELECT b.remaining, coalesce((SELECT sum(a.amount) FROM billing.credit_applications a
                                          WHERE a.credit_id = b.credit_id), 0), b.amount
             FROM billing.v_credit_balances b WHERE b.customer_id = %s
            ORDER BY b.granted_at""", (cid,)).fetchall()
    for _, applied, grant in rows:
        assert 0 <= applied <= grant  # never restored more than consumed
    return [r[0] for r in rows], [r[1] for r in rows]


def _reconcile_g(settings, conn):
    from jobs.batch.reconcile import run_reconcile

    rep = run_reconcile(conn, settings, "2026-01", use_kafka=False, record=False)
    g = next(c for c in rep.checks if c.name.startswith("g."))
    assert g.status == "ok", g.mismatches


@pytest.mark.parametrize("name", list(VOID_CASES))
def test_void_gives_back_the_credit_the_invoice_consumed(settings, conn, name):
    case = VOID_CASES[name]
    n = _credit_invoice(conn, "a", case)
    assert conn.execute("SELECT credits_applied, tax, total FROM billing.invoices "
                        "WHERE invoice_number = %s", (n,)).fetchone() == tuple(D(v) for v in case.standard)
    if case.paid:
        record_payment(conn, PaymentIn(n, D(case.paid), "USD", TODAY, "card", "p1"))
    v = void_invoice(conn, n, TODAY)
    cn = conn.execute("SELECT invoice_id, subtotal, credits_applied, tax, total FROM billing.invoices "
                      "WHERE invoice_number = %s", (v.credit_note_number,)).fetchone()
    assert cn[1:] == tuple(D(x) for x in case.void)
    assert (v.amount, v.credits_restored) == (-cn[4], -cn[2])
    # the credit comes back as negative applications of the credit note, per credit
    back = dict(conn.execute("SELECT credit_id, amount FROM billing.credit_applications "
                             "WHERE invoice_id = %s", (cn[0],)).fetchall())
    assert sum(back.values(), D(0)) == cn[2] and all(a < 0 for a in back.values())
    remaining, applied = _credits(conn, "a")
    assert remaining == [D(x) for x in case.remaining] and all(a == 0 for a in applied)
    # tax: never more refunded than charged, and the period nets to what was paid
    std_tax = D(case.standard[1])
    assert 0 <= -cn[3] <= std_tax
    assert D(case.standard[2]) + cn[4] == D(case.paid or 0)
    assert _row(conn, n)[:2] == ("void", 0)
    assert _row(conn, v.credit_note_number)[:2] == ("paid", 0)
    _reconcile_g(settings, conn)


LATER = {
    # the period re-rated down after the void: the credit already came back with the void
    "fully credit-funded, void, then a decrease": ("150", False),
    "partly credit-funded, void, then a decrease": ("10", False),
    # a draft credit note built before the void gives back its part itself when issued
    "fully credit-funded, draft credit note, void, then issue": ("150", True),
}


@pytest.mark.parametrize("name", list(LATER))
def test_a_later_run_of_the_period_does_not_give_the_credit_back_twice(settings, conn, name):
    grant, draft_first = LATER[name]
    n = _credit_invoice(conn, "a", VoidCase([grant]))
    if draft_first:
        add_usage(conn, "a", "api_calls", W + timedelta(hours=1), [0], tiered((None, "0.05")))
        run_invoicing(conn, "2026-01", ["a"])  # a draft credit note of −50.00, 50.00 of credit back
    v = void_invoice(conn, n, TODAY)
    # (the draft's 50.00 counts as given back already: the void restores the rest)
    assert _credits(conn, "a") == ([D(grant)], [D(0)])
    assert v.credits_restored == min(D(grant), D(100)) - (D(50) if draft_first else 0)
    if not draft_first:
        add_usage(conn, "a", "api_calls", W + timedelta(hours=1), [0], tiered((None, "0.05")))
    run_invoicing(conn, "2026-01", ["a"], issue=True)
    docs = conn.execute("SELECT kind, subtotal, credits_applied, tax FROM billing.invoices "
                        "WHERE customer_id = 'a' ORDER BY invoice_id").fetchall()
    assert [d[0] for d in docs] == ["standard", "credit_note", "credit_note"]
    # every credit back exactly once: the period holds none of it, and never a negative tax
    assert _credits(conn, "a") == ([D(grant)], [D(0)])
    assert sum(d[2] for d in docs) == 0 and sum(d[3] for d in docs) >= 0
    _reconcile_g(settings, conn)


@pytest.mark.parametrize("credit", [None, "10"], ids=["no credit", "partly credit-funded"])
def test_a_paid_invoice_is_not_voided_with_or_without_credit_and_nothing_changes(conn, credit):
    """Paid in full (107.10 after 10.00 of credit, or 100.00): nothing is open, so nothing is
    voided — a refund goes against a credit note; only a document paid by credit alone is."""
    n = _credit_invoice(conn, "a", VoidCase([credit] if credit else [], region=None))
    total = conn.execute("SELECT total FROM billing.invoices WHERE invoice_number = %s", (n,)).fetchone()[0]
    record_payment(conn, PaymentIn(n, total, "USD", TODAY, "card", "p1"))
    before = _facts(conn)
    with pytest.raises(LifecycleError, match="nothing open .*not paid by credit alone"):
        void_invoice(conn, n, TODAY)
    assert _facts(conn) == before


def test_write_off_and_refund_against_a_credit_note(conn):
    n = _invoice(conn, "a")  # 100.00
    record_payment(conn, PaymentIn(n, D("100.00"), "USD", TODAY, "card", "p1"))
    # repriced down after it was paid: a credit note of 50.00 that the paid invoice cannot absorb
    add_usage(conn, "a", "api_calls", W + timedelta(hours=1), [0], tiered((None, "0.05")))
    run_invoicing(conn, "2026-01", ["a"], issue=True)
    cn = conn.execute("SELECT invoice_number FROM billing.invoices WHERE kind = 'credit_note'"
                      ).fetchone()[0]
    assert _row(conn, cn)[:2] == ("issued", D("-50"))
    assert _row(conn, n)[:2] == ("paid", 0)
    with pytest.raises(LifecycleError, match="owes 50.000000 USD; a refund of 60.00 is more"):
        record_refund(conn, cn, D("60.00"), "USD", TODAY, "bank", "rf-1")
    with pytest.raises(LifecycleError, match="not a credit note"):
        record_refund(conn, n, D("1"), "USD", TODAY, "bank", "rf-1")
    assert record_refund(conn, cn, D("30.00"), "USD", TODAY, "bank", "rf-1") == "partially_paid"
    before = _facts(conn)
    assert record_refund(conn, cn, D("30.00"), "USD", TODAY, "bank", "rf-1") == "partially_paid"
    with pytest.raises(LifecycleError, match="already recorded"):
        record_refund(conn, cn, D("20.00"), "USD", TODAY, "bank", "rf-1")
    assert _facts(conn) == before
    assert record_refund(conn, cn, D("20.00"), "USD", TODAY, "bank", "rf-2") == "paid"
    # a write-off closes what is open
    m = _invoice(conn, "b")
    assert write_off(conn, m, TODAY, note="uncollectable") == D("100.00")
    assert _row(conn, m)[:2] == ("written_off", 0)
    with pytest.raises(LifecycleError, match="nothing open"):
        write_off(conn, m, TODAY)


def test_status_view_agrees_with_the_pure_rules(conn):
    """The SQL function and billing.status on the same facts, on several dates."""
    docs = [_invoice(conn, c, region=r) for c, r in (("a", "EU-DE"), ("b", None), ("c", None), ("d", None))]
    mark_sent(conn, docs[0], TODAY)
    record_payment(conn, PaymentIn(docs[0], D("20.00"), "USD", TODAY, "card", "x1"))
    record_payment(conn, PaymentIn(docs[1], D("100.00"), "USD", TODAY, "card", "x2"))
    void_invoice(conn, docs[2], TODAY)
    write_off(conn, docs[3], TODAY)
    rows = conn.execute(
        """SELECT i.invoice_id, i.invoice_number, i.kind, i.total, i.due_date, i.corrects_invoice_id
             FROM billing.invoices i WHERE status = 'issued' ORDER BY invoice_id""").fetchall()
    facts = {}
    for inv, kind, on, amount in conn.execute(
            "SELECT invoice_id, kind, occurred_on, amount FROM billing.invoice_events"):
        facts.setdefault(inv, []).append(Fact(FactKind(kind), on, amount))
    due = rows[0][4]
    for as_of in (TODAY, due, due + timedelta(days=1), due + timedelta(days=45)):
        by_id = {r[0]: r for r in rows}
        credited: dict[int, D] = {}
        for orig in {r[5] for r in rows if r[2] == "credit_note"}:
            cns = [r for r in rows if r[5] == orig]
            bal = balance_before_credit_notes(by_id[orig][3], facts.get(orig, []), as_of)
            for cn, take in zip(cns, absorb_credit_notes(bal, [-r[3] for r in cns]), strict=True):
                credited[cn[0]] = take
                credited[orig] = credited.get(orig, D(0)) + take
        for inv_id, number, kind, total, due_date, _ in rows:
            st = document_state(Document(kind, total, due_date, tuple(facts.get(inv_id, ())),
                                         credited.get(inv_id, D(0))), as_of)
            assert _row(conn, number, as_of)[:2] == (st.status.value, st.open_amount), (number, as_of)
            # asked for this one document only (what the payment commands do): the same figures
            assert conn.execute(
                "SELECT status, open_amount, credited FROM billing.document_status(%s, %s)",
                (as_of, [inv_id])).fetchone() == (st.status.value, st.open_amount, st.credited)


def test_analyst_reads_status_and_aging_views(settings, conn):
    n = _invoice(conn, "a")
    record_payment(conn, PaymentIn(n, D("30.00"), "USD", TODAY, "card", "p"))
    with admin_connect(settings) as c:
        c.execute("SET ROLE meterflow_analyst")
        assert c.execute("SELECT status, open_amount FROM billing.v_document_status").fetchone() == (
            "partially_paid", D("70.00"))
        aging = c.execute("SELECT current_amount, total_open FROM billing.v_ar_aging").fetchone()
        assert aging == (D("70.00"), D("70.00"))
        assert c.execute("SELECT count(*) FROM billing.v_payments").fetchone()[0] == 1
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("INSERT INTO billing.invoice_events (invoice_id, kind, occurred_on) "
                      "SELECT invoice_id, 'sent', current_date FROM billing.invoices")


def test_aging_buckets(conn):
    n = _invoice(conn, "a")
    due = conn.execute("SELECT due_date FROM billing.invoices").fetchone()[0]
    cols = "current_amount, days_1_30, days_31_60, days_61_90, days_over_90"
    for days, bucket in ((0, 0), (1, 1), (30, 1), (31, 2), (60, 2), (61, 3), (90, 3), (91, 4)):
        row = conn.execute(f"SELECT {cols} FROM billing.ar_aging(%s)",
                           (due + timedelta(days=days),)).fetchone()
        assert [i for i, v in enumerate(row) if v] == [bucket], (days, row)
    assert n


def test_reconcile_checks_payments_against_totals(settings, conn):
    from jobs.batch.reconcile import run_reconcile

    a = _invoice(conn, "a", region="EU-DE")
    b = _invoice(conn, "b")
    _invoice(conn, "c")
    record_payment(conn, PaymentIn(a, D("150.00"), "USD", TODAY, "card", "p1"))  # 31.00 to credit
    record_payment(conn, PaymentIn(b, D("20.00"), "USD", TODAY, "card", "p2"))
    void_invoice(conn, b, TODAY)
    rep = run_reconcile(conn, settings, "2026-01", use_kafka=False, record=False)
    g = next(c for c in rep.checks if c.name.startswith("g."))
    assert g.status == "ok", g.mismatches
    assert g.detail == "3 invoices; open receivables: c 100 USD", g.detail
    # a payment whose fact is missing (written around the job) is found
    with admin_connect(settings, autocommit=True) as su:
        su.execute("""INSERT INTO billing.payments (external_ref, invoice_id, amount, currency,
                        paid_on, method, applied) SELECT 'rogue', invoice_id, 5, 'USD', current_date,
                        'card', 5 FROM billing.invoices WHERE invoice_number = %s""", (a,))
    rep = run_reconcile(conn, settings, "2026-01", use_kafka=False, record=False)
    g = next(c for c in rep.checks if c.name.startswith("g."))
    assert g.status == "mismatch"
    assert {(m.customer_id, m.meter, m.note) for m in g.mismatches} == {
        ("a", a, "payments applied vs payment facts"),
        ("a", a, "payments + write-offs + credit notes + open vs total")}


def test_customers_file_carries_payment_terms(conn):
    from pricing.reference import ReferenceFileError, customers_from_data
    from sinks.pricebook_store import store_customers

    def load(terms):
        row = {"customer_id": "acme", "price_book_id": "pb", "currency": "USD"}
        if terms is not None:
            row["payment_terms_days"] = terms
        return store_customers(conn, customers_from_data({"customers": [row]}))[0].status

    assert load(14) == "inserted"
    assert conn.execute("SELECT payment_terms_days FROM billing.customers").fetchone() == (14,)
    assert load(14) == "unchanged"
    assert load(None) == "updated"  # back to the configured default
    assert conn.execute("SELECT payment_terms_days FROM billing.customers").fetchone() == (None,)
    with pytest.raises(ReferenceFileError, match="payment_terms_days"):
        customers_from_data({"customers": [{"customer_id": "x", "price_book_id": "pb",
                                            "currency": "USD", "payment_terms_days": -1}]})


def test_concurrent_payments_never_settle_an_invoice_twice(settings, conn):
    """Two payments of 60 on a 100 invoice at once: 100 applied in all, 20 to credit; the same
    reference sent twice at once is recorded once."""
    import threading

    n = _invoice(conn, "a")
    barrier = threading.Barrier(4)
    results, errors = [], []

    def pay(ref):
        try:
            with connect(settings, autocommit=True) as c:
                barrier.wait()
                results.append(record_payment(c, PaymentIn(n, D("60.00"), "USD", TODAY, "card", ref)))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=pay, args=(r,)) for r in ("t1", "t2", "t2", "t1")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(r.recorded for r in results) == [False, False, True, True]
    assert conn.execute("SELECT sum(applied), sum(amount - applied), count(*) FROM billing.payments"
                        ).fetchone() == (D("100"), D("20"), 2)
    assert _row(conn, n)[:2] == ("paid", 0)
