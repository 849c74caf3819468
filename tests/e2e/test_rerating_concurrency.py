"""The metering ledger writer and the re-rating consumer apply batches that touch the same
(customer, meter, period) at the same time (two threads, two connections, private topics, many
small batches); Σ charges per period still equals Rate over the final windows, and every window
holds everything both wrote."""

from __future__ import annotations

import random
import threading
from collections import defaultdict
from decimal import Decimal

import pytest

from jobs.consumers.ledger_writer import metering_roles, run_ledger
from jobs.consumers.rerating import run_rerating
from pricing.periods import to_epoch_ms
from sinks.db import connect
from tests.e2e.test_rerating_support import (
    H,
    assert_sigma_equals_rate,
    final_windows,
    late_record,
    produce,
    utc,
)
from tests.integration.ledger_input import event, firing
from tests.integration.metering_util import load_prices, private_metering_settings

pytestmark = pytest.mark.integration

NOV = utc(2026, 11, 1)


def window_msgs(c: str, m: str, ws, q: int) -> list[bytes]:
    """The metering job's ledger messages for a window with one on-time event: the event, then
    the window's on-time firing."""
    return [event(f"ot-{c}-{m}-{to_epoch_ms(ws)}", c, m, ws, q), firing(c, m, ws, [q])]


def test_ledger_and_re_rating_writing_the_same_periods_at_once_keep_sigma_equal_to_rate() -> None:
    rnd = random.Random(5)
    with private_metering_settings(partitions=2) as settings:
        load_prices(settings, ["cust-a", "cust-b"])
        expected: dict[tuple, Decimal] = defaultdict(Decimal)
        ledger_msgs, late_msgs = [], []
        for c in ("cust-a", "cust-b"):
            for h in range(0, 24 * 20, 3):  # windows through the month, both jobs write them
                ws = NOV + h * H
                for m in ("api_calls", "seats"):
                    q = rnd.randint(50, 300) if m == "api_calls" else rnd.randint(1, 20)
                    ledger_msgs += window_msgs(c, m, ws, q)
                    expected[(c, m, ws)] = Decimal(q) if m == "seats" else expected[(c, m, ws)] + q
                for i in range(rnd.randint(1, 4)):
                    t = ws + rnd.randint(0, 3599) * H / 3600
                    m = rnd.choice(("api_calls", "seats"))
                    q = rnd.randint(1, 40)
                    late_msgs.append(late_record(f"late-{c}-{h}-{i}", c, m, t, str(q)))
                    expected[(c, m, ws)] = (max(expected[(c, m, ws)], Decimal(q)) if m == "seats"
                                            else expected[(c, m, ws)] + q)
        produce(settings, settings.topics.ledger, ledger_msgs, key=b"cust")
        produce(settings, settings.topics.late, late_msgs, key=b"cust")

        errors: list[BaseException] = []
        start = threading.Barrier(2)
        batches = {"ledger": 0, "rerating": 0}

        def ledger() -> None:
            try:
                with connect(settings) as conn:
                    start.wait()
                    run_ledger(conn, bootstrap_servers=settings.kafka.bootstrap_servers,
                               roles=metering_roles(settings.topics.ledger, settings.topics.duplicates),
                               consumer="metering-ledger", aggregations=settings.meter_aggregations,
                               bounded=True, max_batch=7,
                               on_batch=lambda r, b: batches.__setitem__("ledger", batches["ledger"] + 1))
            except BaseException as e:  # noqa: BLE001 - the test asserts there were none
                errors.append(e)

        def rerating() -> None:
            try:
                start.wait()
                run_rerating(settings, bounded=True, max_batch=5, linger_s=0.0,
                             on_batch=lambda r: batches.__setitem__("rerating", batches["rerating"] + 1))
            except BaseException as e:  # noqa: BLE001 - the test asserts there were none
                errors.append(e)

        threads = [threading.Thread(target=ledger), threading.Thread(target=rerating)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
        assert not errors, errors
        assert batches["ledger"] > 20 and batches["rerating"] > 20, batches

        fw = final_windows(settings)
        got = {(c, m, ws): q for (c, m, _), ws_q in fw.items() for ws, q in ws_q.items()}
        assert got == dict(expected)
        assert_sigma_equals_rate(settings)
        with connect(settings) as conn:
            causes = dict(conn.execute("SELECT cause, count(*) FROM rated_charges GROUP BY 1").fetchall())
        assert causes.get("late_event") and (causes.get("window_fired") or causes.get("late_revision"))
