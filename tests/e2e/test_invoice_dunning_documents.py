"""Issue 17 on real PostgreSQL: dunning (each step once, concurrent runs), and rendered
documents (HTML, PDF read back with pdftotext, first page not blank with pdftoppm)."""

from __future__ import annotations

import shutil
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from billing.dunning import Step
from jobs.batch import dunning
from jobs.batch.invoicing import run_invoicing
from jobs.batch.payments import PaymentIn, record_payment, void_invoice
from jobs.batch.render import Seller, render_invoice
from sinks.db import connect
from tests.integration.dbutil import (
    add_usage,
    seed_customer,
    seed_price_book,
    seed_tax_rate,
    tiered,
)

pytestmark = pytest.mark.integration

D = Decimal
JAN = datetime(2026, 1, 1, tzinfo=UTC)
W = JAN + timedelta(days=4, hours=10)
PRICE = tiered((None, "0.10"))
TODAY = datetime.now(UTC).date()
POLICY = (Step("reminder", 3), Step("second_reminder", 14), Step("final_notice", 30))
SELLER = Seller("Meterflow Testing GmbH", ("Hauptstrasse 1", "10115 Berlin"), "DE123456789")


@pytest.fixture(scope="module")
def seed():
    """Seeds each test's database (``conn`` connects to it)."""

    def seed(c) -> None:
        seed_price_book(c, "pb", "USD")
        seed_tax_rate(c, "EU-DE", "0.19", datetime(2020, 1, 1, tzinfo=UTC))

    return seed


def _invoice(conn, cid, calls=1000, region=None) -> str:
    seed_customer(conn, cid, "pb", "USD", region)
    add_usage(conn, cid, "api_calls", W, [calls], PRICE)
    run_invoicing(conn, "2026-01", [cid], issue=True, payment_terms_days=30)
    return conn.execute("SELECT invoice_number FROM billing.invoices WHERE customer_id = %s "
                        "ORDER BY invoice_id DESC LIMIT 1", (cid,)).fetchone()[0]


def _notices(conn):
    return conn.execute("SELECT i.invoice_number, n.step FROM billing.dunning_notices n "
                        "JOIN billing.invoices i USING (invoice_id) ORDER BY 1, n.step_days").fetchall()


# ------------------------------------------------------------------------------- dunning

def test_dunning_appends_each_step_once_and_skips_paid_and_void(conn):
    a, b, c, d = (_invoice(conn, x) for x in "abcd")
    due = TODAY + timedelta(days=30)
    record_payment(conn, PaymentIn(b, D("100.00"), "USD", TODAY, "card", "pb"))
    void_invoice(conn, c, TODAY)
    record_payment(conn, PaymentIn(d, D("40.00"), "USD", TODAY, "card", "pd"))
    assert dunning.run(conn, due + timedelta(days=2), POLICY, SELLER).appended == []
    r = dunning.run(conn, due + timedelta(days=3), POLICY, SELLER)
    assert [(n.invoice_number, n.step, n.open_amount) for n in r.appended] == [
        (a, "reminder", "100.00"), (d, "reminder", "60.00")]
    # re-running the same day, or a day later: nothing new
    assert dunning.run(conn, due + timedelta(days=3), POLICY, SELLER).appended == []
    assert dunning.run(conn, due + timedelta(days=4), POLICY, SELLER).appended == []
    record_payment(conn, PaymentIn(d, D("60.00"), "USD", TODAY, "card", "pd2"))
    dunning.run(conn, due + timedelta(days=14), POLICY, SELLER)
    dunning.run(conn, due + timedelta(days=45), POLICY, SELLER)
    assert _notices(conn) == [(a, "reminder"), (a, "second_reminder"), (a, "final_notice"),
                              (d, "reminder")]
    doc = conn.execute("SELECT document FROM billing.dunning_notices WHERE step = 'final_notice'"
                       ).fetchone()[0]
    assert f"Invoice {a} was due on {due.isoformat()}" in doc and "100.00 USD" in doc


def test_concurrent_dunning_runs_append_each_notice_once(settings, conn):
    numbers = [_invoice(conn, f"c{i}") for i in range(6)]
    as_of = TODAY + timedelta(days=30 + 20)
    barrier = threading.Barrier(2)
    results, errors = [], []

    def one():
        try:
            with connect(settings, autocommit=True) as c:
                barrier.wait()
                results.append(dunning.run(c, as_of, POLICY, SELLER))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(len(r.appended) for r in results) == 6
    assert sorted(_notices(conn)) == sorted((n, "second_reminder") for n in numbers)


# ------------------------------------------------------------------------------- documents

pdf_tools = pytest.mark.skipif(not (shutil.which("pdftotext") and shutil.which("pdftoppm")),
                               reason="poppler-utils missing: run scripts/setup.sh")


def _pdf_text(pdf: bytes, tmp_path: Path) -> str:
    f = tmp_path / "doc.pdf"
    f.write_bytes(pdf)
    out = subprocess.run(["pdftotext", "-layout", str(f), "-"], capture_output=True, text=True,
                         check=True).stdout
    return " ".join(out.split())  # (a sentence may wrap)


def _page_not_blank(pdf: bytes, tmp_path: Path) -> None:
    f = tmp_path / "page.pdf"
    f.write_bytes(pdf)
    subprocess.run(["pdftoppm", "-png", "-r", "40", "-f", "1", "-l", "1", str(f),
                    str(tmp_path / "p")], check=True)
    png = next(tmp_path.glob("p*.png"))
    from PIL import Image  # WeasyPrint's own dependency

    img = Image.open(png).convert("L")
    dark = sum(img.histogram()[:128])
    assert dark > 500, f"page 1 is (almost) blank: {dark} dark pixels"


@pdf_tools
def test_invoice_pdf_shows_every_figure(conn, tmp_path):
    n = _invoice(conn, "acme", calls=1234, region="EU-DE")
    doc = conn.execute("SELECT subtotal, tax, total, due_date, (issued_at AT TIME ZONE 'UTC')::date "
                       "FROM billing.invoices WHERE invoice_number = %s", (n,)).fetchone()
    assert doc[:3] == (D("123.40"), D("23.45"), D("146.85"))
    html = render_invoice(conn, n, "html", SELLER).decode()
    assert "<h1>Invoice " + n in html
    pdf = render_invoice(conn, n, "pdf", SELLER)
    assert pdf.startswith(b"%PDF")
    text = _pdf_text(pdf, tmp_path)
    for figure in (n, "1,234", "123.40", "23.45", "146.85", "0.00", doc[3].isoformat(),
                   doc[4].isoformat(), "2026-01-01 to 2026-01-31", "Meterflow Testing GmbH",
                   "DE123456789", "Acme", "api_calls", "19 %"):
        assert figure in text, figure
    _page_not_blank(pdf, tmp_path)


@pdf_tools
def test_correction_and_credit_note_documents(conn, tmp_path):
    n = _invoice(conn, "acme", calls=1000)
    add_usage(conn, "acme", "api_calls", W + timedelta(hours=1), [200], PRICE)
    run_invoicing(conn, "2026-01", ["acme"], issue=True)
    corr = conn.execute("SELECT invoice_number FROM billing.invoices WHERE kind = 'correction'"
                        ).fetchone()[0]
    text = _pdf_text(render_invoice(conn, corr, "pdf", SELLER), tmp_path)
    for figure in ("Correction invoice " + corr, "Corrects invoice " + n, "100.00", "120.00",
                   "+20.00", "1,200"):
        assert figure in text, figure
    v = void_invoice(conn, corr, TODAY)
    text = _pdf_text(render_invoice(conn, v.credit_note_number, "pdf", SELLER), tmp_path)
    for figure in ("Credit note " + v.credit_note_number, "Credits invoice " + corr, "-20.00",
                   "is a credit note", "not a request for payment"):
        assert figure in text, figure


@pdf_tools
def test_tier_breakdown_in_words_from_the_price_book(conn, tmp_path):
    from pricing.book import load_price_book
    from sinks.pricebook_store import store_price_books

    root = Path(__file__).resolve().parents[2]
    store_price_books(conn, [load_price_book(root / "examples" / "pricebooks" / "standard-usd.toml")])
    seed_customer(conn, "acme", "standard-usd", "USD")
    add_usage(conn, "acme", "api_calls", W, [1234], tiered((1000, "0.10"), (None, "0.08")),
              price_book_id="standard-usd", price_version="2026-01")
    run_invoicing(conn, "2026-01", ["acme"], issue=True)
    n = conn.execute("SELECT invoice_number FROM billing.invoices").fetchone()[0]
    text = _pdf_text(render_invoice(conn, n, "pdf", SELLER), tmp_path)
    assert "first 1,000 at 0.10 USD each = 100.00; next 234 at 0.08 USD each = 18.72" in text, \
        text[text.find("api_calls"):][:300]
    assert "118.72" in text


def test_a_max_meter_line_shows_the_billed_peak_not_the_sum_of_window_peaks(conn) -> None:
    """Seats priced on the period's peak (pricing/rater.py): the document's quantity is the peak
    billed (9, not 7 + 9 + 8 = 24 summed over the windows), and a correction that raises the peak
    to 12 shows the move (+3) and the period's total now (12)."""
    import re

    from sinks.ledger import apply_batch
    from sinks.pricebook_store import PriceBooks
    from tests.integration.test_ledger import BOOK, NOV, H, Offsets, fire, late, seed_prices

    seed_prices(conn, BOOK, customers=["seatco"])
    conn.commit()
    off, books, agg = Offsets(), PriceBooks(), {"api_calls": "sum", "active_seats": "max"}
    for h, peak in enumerate(("7", "9", "8")):
        apply_batch(conn, off.batch(fire("seatco", "active_seats", NOV + h * H, "1", peak)), consumer="seats",
                    books=books, aggregations=agg)
    run_invoicing(conn, "2026-11", ["seatco"], issue=True)

    def row(number: str) -> list[str]:
        html = render_invoice(conn, number, "html", SELLER).decode()
        line = html[html.index("<td>active_seats"):]
        return re.findall(r'<td class="num">([^<]*)</td>', line[:line.index("</tr>")])

    first = conn.execute("SELECT invoice_number FROM billing.invoices WHERE customer_id = 'seatco'").fetchone()[0]
    assert row(first) == ["9", "45.00"]  # 9 seats × 5 USD
    apply_batch(conn, off.batch([late("seatco", "active_seats", NOV + 2 * H, "12")]), consumer="seats",
                books=books, aggregations=agg)
    run_invoicing(conn, "2026-11", ["seatco"], issue=True)
    corr = conn.execute("SELECT invoice_number FROM billing.invoices WHERE customer_id = 'seatco' "
                        "AND kind = 'correction'").fetchone()[0]
    assert row(corr) == ["3", "45.00", "60.00", "+15.00"]
    assert "period total now 12" in render_invoice(conn, corr, "html", SELLER).decode()


def test_the_cli_end_to_end(settings, conn, tmp_path):
    """meterflow invoice (run, render, sent, status, aging), payments record, dunning run."""
    import os
    import sys

    from tests.integration.dbutil import cli_env

    seed_customer(conn, "acme", "pb", "USD")
    add_usage(conn, "acme", "api_calls", W, [1000], PRICE)
    env = {**cli_env(settings), "HOME": os.environ.get("HOME", "/tmp"), "COLUMNS": "200"}

    def mf(*args, code=0):
        r = subprocess.run([sys.executable, "-m", "cli.app", *args], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == code, r.stdout + r.stderr
        assert "Traceback" not in r.stderr
        return " ".join((r.stdout + r.stderr).split())

    mf("invoice", "--period", "2026-01", "--issue", "-q")
    n = conn.execute("SELECT invoice_number FROM billing.invoices").fetchone()[0]
    assert f"{n} -> {n}.pdf" in mf("invoice", "render", n, "--format", "pdf")
    assert (tmp_path / f"{n}.pdf").read_bytes().startswith(b"%PDF")
    assert "1 document" not in mf("invoice", "render", "--period", "2026-01", "--format", "html",
                                  "--out", "out")
    assert (tmp_path / "out" / f"{n}.html").exists()
    mf("invoice", "render", "2026-999999", code=1)
    mf("invoice", "render", n, "--format", "docx", code=2)
    assert "status sent" in mf("invoice", "sent", n)
    assert f"40.00 USD applied to {n}; invoice is partially_paid, open 60.00 USD" in mf(
        "payments", "record", "--invoice", n, "--amount", "40.00", "--currency", "USD",
        "--reference", "bank-1", "--method", "bank_transfer")
    assert "│ partially_paid │ 60.00 USD │" in mf("invoice", "status")
    due = conn.execute("SELECT due_date FROM billing.invoices").fetchone()[0]
    late = (due + timedelta(days=35)).isoformat()
    assert "│ acme │ USD │ 0.00 USD │ 0.00 USD │ 60.00 USD │" in mf("invoice", "aging", "--as-of", late)
    out = mf("dunning", "run", "--as-of", late, "--out", "reminders")
    assert "1 reminder(s) appended" in out and "final_notice" in out
    assert (tmp_path / "reminders" / f"{n}-final_notice.html").exists()
    assert "0 reminder(s) appended" in mf("dunning", "run", "--as-of", late)
    err = mf("payments", "record", "--invoice", n, "--amount", "-1", "--currency", "USD",
             "--reference", "bank-2", code=1)
    assert err == "payments record: amount must be positive, got -1"
    (tmp_path / "st.csv").write_text(
        "date,amount,currency,reference,remittance\n"
        f"{TODAY},10.00,USD,st-1,INV {n}\n{TODAY},5.00,USD,st-2,thanks\n", encoding="utf-8")
    out = mf("payments", "import", "st.csv")
    assert "st.csv: 1 recorded, 0 already recorded, 1 unmatched" in out
    assert "│ 3 │ st-2 │ no invoice number in the remittance text │" in out
    assert mf("payments", "import", "missing.csv", code=1).startswith("payments import: cannot read")


@pdf_tools
def test_usage_statement_has_a_daily_chart_per_meter(conn, tmp_path):
    from jobs.batch.render.statement import render_statement
    from pricing.periods import parse_period

    seed_customer(conn, "acme", "pb", "USD")
    add_usage(conn, "acme", "api_calls", W, [300], PRICE)
    add_usage(conn, "acme", "api_calls", W + timedelta(days=2), [700], PRICE)
    add_usage(conn, "acme", "storage_gb", W, [5], PRICE)
    pdf = render_statement(conn, "acme", parse_period("2026-01"), "pdf", SELLER)
    text = _pdf_text(pdf, tmp_path)
    for figure in ("Usage statement 2026-01", "api_calls: 1,000 in 2026-01", "2026-01-05 300",
                   "2026-01-07 700", "storage_gb: 5 in 2026-01"):
        assert figure in text, figure
    html = render_statement(conn, "acme", parse_period("2026-01"), "html", SELLER).decode()
    assert html.count("data:image/png;base64,") == 2
    f = tmp_path / "statement.pdf"
    f.write_bytes(pdf)
    images = subprocess.run(["pdfimages", "-list", str(f)], capture_output=True, text=True,
                            check=True).stdout.splitlines()[2:]
    # one chart per meter, embedded in the PDF (their alpha channels are listed as `smask`)
    assert [ln.split()[2] for ln in images].count("image") == 2
    _page_not_blank(pdf, tmp_path)
    with pytest.raises(LookupError):
        render_statement(conn, "nobody", parse_period("2026-01"), "pdf", SELLER)
