"""``meterflow run metering|ledger``: the metering job on the embedded mini-cluster, with the
ledger writer that applies its outputs to PostgreSQL.

``--bounded``: the Flink job reads up to the offsets present at start and finishes (flushing every
window); the ledger writer then applies everything the job committed and stops. Without it both
run until interrupted (Ctrl-C), the ledger writer in a background thread.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from schemas.config import Settings
from sinks.db import connect
from sinks.ledger import ApplyResult, metering_roles, run_ledger

log = logging.getLogger("meterflow.run")
LEDGER_CONSUMER = "metering-ledger"


@dataclass
class MeteringRun:
    seconds_flink: float
    seconds_ledger: float
    ledger: ApplyResult


def run_ledger_writer(settings: Settings, *, bounded: bool, stop=None, on_batch=None) -> ApplyResult:  # noqa: ANN001
    with connect(settings) as conn:
        return run_ledger(
            conn,
            bootstrap_servers=settings.kafka.bootstrap_servers,
            roles=metering_roles(settings.topics.ledger, settings.topics.duplicates),
            consumer=LEDGER_CONSUMER,
            aggregations=settings.meter_aggregations,
            bounded=bounded,
            stop=stop,
            on_batch=on_batch,
        )


def run_metering(settings: Settings, *, bounded: bool, parallelism: int | None = None,
                 on_batch=None, restore: str | None = None) -> MeteringRun:  # noqa: ANN001
    from jobs.flinkenv import with_restore
    from jobs.metering import build_job, submit
    from jobs.topics import ensure_topics

    ensure_topics(settings)
    settings = with_restore(settings, restore)
    t_env, outputs, sinks = build_job(settings, bounded=bounded, parallelism=parallelism)
    t0 = time.monotonic()
    result = submit(t_env, outputs, sinks)
    if bounded:
        result.wait()
        t1 = time.monotonic()
        led = run_ledger_writer(settings, bounded=True, on_batch=on_batch)
        return MeteringRun(t1 - t0, time.monotonic() - t1, led)
    stop = threading.Event()
    box: dict[str, ApplyResult] = {}

    def ledger_loop() -> None:
        box["r"] = run_ledger_writer(settings, bounded=False, stop=stop.is_set, on_batch=on_batch)

    th = threading.Thread(target=ledger_loop, name="ledger-writer", daemon=True)
    th.start()
    try:
        result.wait()
    except KeyboardInterrupt:
        log.info("stopping")
        client = result.get_job_client()
        if client is not None:
            client.cancel().result()
    finally:
        stop.set()
        th.join(timeout=30)
    t1 = time.monotonic()
    return MeteringRun(t1 - t0, 0.0, box.get("r", ApplyResult()))
