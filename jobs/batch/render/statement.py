"""A usage statement per customer and period: daily usage per meter as a chart (matplotlib, Agg
backend — no display), plus the daily figures as a table. Current window values
(``billing.v_current_usage``: late events included, each window's latest revision)."""

from __future__ import annotations

import base64
import io
from collections import defaultdict
from datetime import date, timedelta
from decimal import Decimal

import psycopg

from jobs.batch.render import Seller, _env, html_to_pdf, qty


def daily_usage(conn: psycopg.Connection, customer_id: str, period) -> dict[str, dict[date, Decimal]]:
    """meter -> day -> Σ quantity of the day's windows (UTC days), every day of the period."""
    rows = conn.execute(
        """SELECT meter, (window_start AT TIME ZONE 'UTC')::date AS day, sum(quantity)
             FROM billing.v_current_usage
            WHERE customer_id = %s AND period_start = %s
            GROUP BY 1, 2 ORDER BY 1, 2""",
        (customer_id, period.start),
    ).fetchall()
    days = [(period.start + timedelta(days=i)).date()
            for i in range((period.end - period.start).days)]
    out: dict[str, dict[date, Decimal]] = defaultdict(lambda: dict.fromkeys(days, Decimal(0)))
    for meter, day, q in rows:
        out[meter][day] = q
    return dict(out)


def chart_png(meter: str, series: dict[date, Decimal]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # no pyplot: no global state, thread-safe

    fig = Figure(figsize=(7, 2.4), dpi=110)
    ax = fig.add_subplot()
    days = list(series)
    ax.bar([d.day for d in days], [float(v) for v in series.values()], color="#3465a4")
    ax.set_title(f"{meter}: daily usage")
    ax.set_xlabel("day of month (UTC)")
    ax.set_xlim(0.4, len(days) + 0.6)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def render_statement(conn: psycopg.Connection, customer_id: str, period, fmt: str,
                     seller: Seller) -> bytes:
    if fmt not in ("html", "pdf"):
        raise ValueError(f"format {fmt!r} must be html or pdf")
    row = conn.execute("SELECT coalesce(name, customer_id) FROM billing.customers "
                       "WHERE customer_id = %s", (customer_id,)).fetchone()
    if row is None:
        raise LookupError(f"no customer {customer_id!r}")
    meters = []
    for meter, series in sorted(daily_usage(conn, customer_id, period).items()):
        png = base64.b64encode(chart_png(meter, series)).decode()
        meters.append({"meter": meter, "chart": f"data:image/png;base64,{png}",
                       "total": qty(sum(series.values(), Decimal(0))),
                       "days": [(d.isoformat(), qty(v)) for d, v in series.items() if v]})
    html = _env().get_template("statement.html.j2").render(
        customer=row[0], customer_id=customer_id, period=period.label, meters=meters, seller=seller)
    return html.encode("utf-8") if fmt == "html" else html_to_pdf(html)
