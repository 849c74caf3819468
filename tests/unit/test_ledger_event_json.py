"""The ledger writer hands accepted events to Postgres as the JSON the metering job wrote
(sinks/ledger.py EventJson): which messages take that path, and the COPY text they become."""

from __future__ import annotations

import json

import pytest

from jobs.flink.metering import LEDGER_COLUMNS
from schemas.records import EventJson, WindowChange, parse_ledger
from sinks.ledger import _copy_text_lines


def ledger_message(**fields: object) -> bytes:
    """A ledger message as Flink's JSON format writes it: every column, in LEDGER_COLUMNS order."""
    return json.dumps({c: fields.get(c) for c, _ in LEDGER_COLUMNS}, separators=(",", ":")).encode()


def test_the_jobs_event_messages_start_with_the_prefix_the_writer_tests() -> None:
    # the prefix test relies on `kind` being the first column: a reordering must fail here
    assert LEDGER_COLUMNS[0][0] == "kind"
    msg = ledger_message(kind="event", event_id="e1", customer_id="c", meter="m", quantity="1",
                         event_time_ms=0, window_start_ms=0, ingestion_time_ms=0)
    assert parse_ledger(msg) == EventJson(msg)


@pytest.mark.parametrize("text, expected", [
    # an event in another layout (spaces) goes to Postgres as its JSON too
    (b'{"kind": "event", "event_id": "e1", "customer_id": "c", "meter": "m", "quantity": "2", '
     b'"event_time_ms": 0, "window_start_ms": 0, "ingestion_time_ms": 0}', EventJson),
    # window firings are parsed in Python
    (b'{"kind":"window","customer_id":"c","meter":"m","window_start_ms":0,"window_end_ms":3600000,'
     b'"qsum":"2","qcount":1,"qmax":"2"}', WindowChange),
    # a late partial of an older job is superseded by its event message (lateness = late)
    (b'{"kind":"late","customer_id":"c","meter":"m","window_start_ms":0,"window_end_ms":3600000,'
     b'"qsum":"2","qcount":1,"qmax":"2","event_id":"e9"}', type(None)),
])
def test_each_ledger_message_kind_takes_its_path(text: bytes, expected: type) -> None:
    assert isinstance(parse_ledger(text), expected)


def test_an_unknown_message_kind_is_an_error_not_a_silent_skip() -> None:
    with pytest.raises(ValueError, match="unknown ledger message kind"):
        parse_ledger(b'{"kind":"surprise"}')


@pytest.mark.parametrize("docs, expected", [
    # one line per document, newline-terminated
    ([b"{}", b"[]"], b"{}\n[]\n"),
    # a backslash (JSON escapes) is doubled: COPY text format would read it as an escape
    ([b'{"p":"a\\"b\\\\c"}'], b'{"p":"a\\\\"b\\\\\\\\c"}\n'),
    # whitespace between tokens: tab, CR and LF become COPY escapes, not row or column breaks
    ([b'{\t"a":\r\n1}'], b'{\\t"a":\\r\\n1}\n'),
    # no documents, no lines (not one empty line: that would be a row)
    ([], b""),
])
def test_documents_become_copy_text_lines_that_postgres_reads_back_verbatim(docs: list[bytes],
                                                                          expected: bytes) -> None:
    assert _copy_text_lines(docs) == expected
