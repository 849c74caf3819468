"""The advisor reading ``usage_events`` (a fresh database) and ``meterflow watermarks advise``
end to end on it: the table, the recommendation and the report files."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from jobs.batch.watermark_advisor.sources import from_postgres
from tests.integration.dbutil import admin_connect, cli_env, fresh_database

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 4, tzinfo=UTC)


def _seed(settings, n: int = 3000) -> list[tuple]:
    rng = np.random.default_rng(11)
    rows = []
    offsets = [0, 0, 0]
    for i in range(n):
        arrival = T0 + timedelta(seconds=3.6 * i)
        lag = timedelta(milliseconds=int(rng.exponential(4000)) + (7_200_000 if i % 500 == 7 else 0))
        p = int(rng.integers(0, 3))
        et = arrival - lag
        rows.append((f"pg-{i}", f"cust-{i % 5}", "api_calls", et, arrival, 1,
                     et.replace(minute=0, second=0, microsecond=0), "stream", "usage-events", p, offsets[p]))
        offsets[p] += 1
    with admin_connect(settings) as conn:
        with conn.cursor().copy("COPY billing.usage_events (event_id, customer_id, meter, event_time, ingestion_time,"
                                " quantity, window_start, source, kafka_topic, kafka_partition, kafka_offset)"
                                " FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)
        conn.commit()
    return rows


def test_usage_events_are_replayed_in_arrival_order_and_the_command_advises(tmp_path: Path) -> None:
    with fresh_database() as s:
        s = s.model_copy(update={"topics": s.topics.model_copy(update={"partitions": 3})})
        rows = _seed(s)
        arr = from_postgres(s, T0 + timedelta(hours=1), T0 + timedelta(hours=2))
        inside = [r for r in rows if T0 + timedelta(hours=1) <= r[4] < T0 + timedelta(hours=2)]
        assert len(arr) == len(inside) == 1000 and arr.partitions == (0, 1, 2)
        assert np.all(np.diff(arr.clock_ms) >= 0)
        for p in range(3):
            assert np.all(np.diff(arr.offset[arr.partition == p]) == 1)
        assert sorted(arr.event_ms.tolist()) == sorted(int(r[3].timestamp() * 1000) for r in inside)
        assert arr.key is not None and len(set(arr.key.tolist())) == 5

        env = {**cli_env(s), "METERFLOW__TOPICS__PARTITIONS": "3"}
        out = tmp_path / "advice"
        r = subprocess.run([sys.executable, "-m", "cli.app", "watermarks", "advise", "--source", "postgres",
                            "--from", "2026-11-04T00:00:00Z", "--to", "2026-11-05", "--bounds", "1s,5s,20s,1m",
                            "--lateness", "10m,3h", "--out", str(out)],
                           env=env, capture_output=True, text=True, timeout=300,
                           cwd=Path(__file__).resolve().parents[2])
        assert r.returncode == 0, r.stderr
        assert "recommendation:" in r.stdout and "3,000 records" in r.stdout
        assert {p.name for p in out.iterdir()} >= {"report.html", "delay_per_partition.png", "tradeoff.png",
                                                   "advice.json"}

        r = subprocess.run([sys.executable, "-m", "cli.app", "watermarks", "advise", "--source", "postgres",
                            "--period", "2026-01", "--out", str(tmp_path / "none")],
                           env=env, capture_output=True, text=True, timeout=300,
                           cwd=Path(__file__).resolve().parents[2])
        assert r.returncode == 2 and "no events in postgres" in r.stderr and "Traceback" not in r.stderr
