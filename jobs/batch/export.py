"""``meterflow export invoices --period YYYY-MM --format csv|json|parquet [--out PATH]``.

* csv, parquet: one row per invoice line, the invoice's columns repeated on each row.
* json: a list of invoices, each with its ``lines`` (money as decimal strings, never floats).

CSV cells of text columns that a spreadsheet would run as a formula (starting with ``=``, ``+``,
``-``, ``@``, tab or carriage return: customer ids come from producers) get a leading single quote
(OWASP, "CSV injection"); numbers, money and times are written as they are, so ``-1.45`` stays a
number. JSON and Parquet keep the text as it is.

Money is written rounded to the currency's minor unit (``98.72``, JPY ``457``); the line's unrounded
``amount_precise`` keeps its 18 fractional digits. Rows are streamed with a server-side cursor.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import psycopg

from jobs.progress import Progress, progress_of
from pricing.periods import Period, parse_period
from sinks.db import scalar

FORMATS = ("csv", "json", "parquet")
STATUSES = ("issued", "draft", "all")

INVOICE_COLS = ["invoice_id", "invoice_number", "customer_id", "period_start", "period_end",
                "currency", "kind", "corrects_invoice_id", "corrects_invoice_number", "status",
                "subtotal", "credits_applied", "tax_region", "tax_rate", "tax", "total",
                "issued_at"]
LINE_COLS = ["line_id", "meter", "quantity", "amount_precise", "amount", "rounding_mode",
             "charge_count"]
_MONEY = {"subtotal", "credits_applied", "tax", "total", "amount"}

_SQL = """
SELECT i.invoice_id, i.invoice_number, i.customer_id, i.period_start, i.period_end,
       i.currency::text, i.kind, i.corrects_invoice_id, o.invoice_number, i.status,
       i.subtotal, i.credits_applied, i.tax_region, i.tax_rate, i.tax, i.total, i.issued_at,
       l.line_id, l.meter, l.quantity, l.amount_precise, l.amount, l.rounding_mode, l.charge_count,
       i.minor_units
  FROM billing.invoices i
  JOIN billing.invoice_lines l ON l.invoice_id = i.invoice_id
  LEFT JOIN billing.invoices o ON o.invoice_id = i.corrects_invoice_id
 WHERE i.period_start = %(ps)s AND (%(status)s = 'all' OR i.status = %(status)s)
 ORDER BY i.invoice_number NULLS LAST, i.invoice_id, l.meter
"""


def _rows(conn: psycopg.Connection, period: Period, status: str) -> Iterator[dict]:
    with conn.transaction(), conn.cursor(name="mf_export") as cur:
        cur.itersize = 5000
        cur.execute(_SQL, {"ps": period.start, "status": status})
        names = INVOICE_COLS + LINE_COLS + ["minor_units"]
        for r in cur:
            row = dict(zip(names, r, strict=True))
            q = Decimal(1).scaleb(-row.pop("minor_units"))
            for k in _MONEY:
                row[k] = row[k].quantize(q)
            yield row


def _count(conn: psycopg.Connection, period: Period, status: str) -> int:
    n: int = scalar(
        conn,
        """SELECT count(*) FROM billing.invoice_lines l JOIN billing.invoices i USING (invoice_id)
            WHERE i.period_start = %(ps)s AND (%(status)s = 'all' OR i.status = %(status)s)""",
        {"ps": period.start, "status": status},
    )
    return n


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _text(v) -> str:
    if v is None:
        return ""
    if isinstance(v, Decimal):
        return format(v, "f")
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


def _csv_cell(v) -> str:
    """A CSV cell: text that a spreadsheet would evaluate is neutralised, other values are not."""
    if isinstance(v, str) and v.startswith(_FORMULA_START):
        return "'" + v
    return _text(v)


def export_invoices(conn: psycopg.Connection, period: Period | str, fmt: str, out: Path, *,
                    status: str = "all", progress: Progress | bool | None = None) -> tuple[int, int]:
    """Write the period's invoices with their lines; return (invoices, lines) written."""
    if isinstance(period, str):
        period = parse_period(period)
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {', '.join(STATUSES)}")
    total = _count(conn, period, status)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    invoices: set[int] = set()
    n_lines = 0
    bar = progress_of(progress)
    bar.start(f"export {period.label} → {out.name}", total)
    try:
        rows = _rows(conn, period, status)
        if fmt == "csv":
            with out.open("w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(INVOICE_COLS + LINE_COLS)
                for row in rows:
                    w.writerow([_csv_cell(row[c]) for c in INVOICE_COLS + LINE_COLS])
                    invoices.add(row["invoice_id"])
                    n_lines += 1
                    if n_lines % 5000 == 0:
                        bar.advance(5000)
        elif fmt == "json":
            docs: list[dict] = []
            for row in rows:
                if not docs or docs[-1]["invoice_id"] != row["invoice_id"]:
                    docs.append({c: _json(row[c]) for c in INVOICE_COLS} | {"lines": []})
                docs[-1]["lines"].append({c: _json(row[c]) for c in LINE_COLS})
                invoices.add(row["invoice_id"])
                n_lines += 1
                if n_lines % 5000 == 0:
                    bar.advance(5000)
            out.write_text(json.dumps(docs, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        else:
            n_inv, n_lines = _write_parquet(rows, out, lambda k: bar.advance(k))
            bar.update(total)
            return n_inv, n_lines
        bar.update(total)
    finally:
        bar.finish()
    return len(invoices), n_lines


def _json(v):
    if v is None or isinstance(v, (int, str)):
        return v
    return _text(v)


def _write_parquet(rows: Iterator[dict], out: Path, advance) -> tuple[int, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    money = pa.decimal128(38, 6)
    schema = pa.schema([
        ("invoice_id", pa.int64()), ("invoice_number", pa.string()), ("customer_id", pa.string()),
        ("period_start", pa.timestamp("us", tz="UTC")), ("period_end", pa.timestamp("us", tz="UTC")),
        ("currency", pa.string()), ("kind", pa.string()), ("corrects_invoice_id", pa.int64()),
        ("corrects_invoice_number", pa.string()), ("status", pa.string()),
        ("subtotal", money), ("credits_applied", money), ("tax_region", pa.string()),
        ("tax_rate", pa.decimal128(9, 6)), ("tax", money), ("total", money),
        ("issued_at", pa.timestamp("us", tz="UTC")),
        ("line_id", pa.int64()), ("meter", pa.string()), ("quantity", pa.decimal128(38, 12)),
        ("amount_precise", pa.decimal128(38, 18)), ("amount", money),
        ("rounding_mode", pa.string()), ("charge_count", pa.int64()),
    ])
    invoices: set[int] = set()
    n = 0
    batch: list[dict] = []
    with pq.ParquetWriter(out, schema) as w:
        def flush() -> None:
            if batch:
                w.write_table(pa.Table.from_pylist(batch, schema=schema))
                advance(len(batch))
                batch.clear()

        for row in rows:
            batch.append(row)
            invoices.add(row["invoice_id"])
            n += 1
            if len(batch) >= 20000:
                flush()
        flush()
    return len(invoices), n
