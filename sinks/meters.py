"""``billing.meters`` (V009) kept in step with the configuration's ``[[meters]]``.

The configuration is where a meter's aggregation lives (the metering job and the rater read it);
analysts need it in Postgres to add up usage correctly (the peak of a ``max`` meter, not Σ). It is
written where the configuration is known: by ``meterflow db migrate`` and by every ledger writer
when it starts (jobs/flink/run.py), in one statement each, so a changed unit or aggregation
reaches Postgres before the next window is rated. A meter that left the configuration keeps its
row (its charges stay) with ``configured = false``.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from schemas.config import MeterSettings


def sync_meters(conn: psycopg.Connection, meters: Sequence[MeterSettings]) -> int:
    """Upsert ``meters`` and mark the others as no longer configured; returns the rows changed.
    Runs in its own transaction (or the caller's)."""
    names = [m.name for m in meters]
    with conn.transaction():
        cur = conn.execute(
            """INSERT INTO billing.meters AS t (meter, aggregation, unit, description, configured)
               SELECT n, a, u, d, true
                 FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) AS x(n, a, u, d)
               ON CONFLICT (meter) DO UPDATE
                 SET aggregation = EXCLUDED.aggregation, unit = EXCLUDED.unit,
                     description = EXCLUDED.description, configured = true, updated_at = now()
               WHERE (t.aggregation, t.unit, t.description, t.configured)
                     IS DISTINCT FROM (EXCLUDED.aggregation, EXCLUDED.unit, EXCLUDED.description, true)""",
            (names, [m.aggregation.value for m in meters], [m.unit for m in meters],
             [m.description for m in meters]),
        )
        changed = cur.rowcount
        cur = conn.execute(
            """UPDATE billing.meters SET configured = false, updated_at = now()
                WHERE configured AND NOT (meter = ANY (%s::text[]))""",
            (names,),
        )
        return changed + cur.rowcount
