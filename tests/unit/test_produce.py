"""`meterflow produce --file`: lines are sent byte for byte, keyed by customer_id when readable."""

from pathlib import Path

from jobs.tools.produce import records_from_jsonl


def test_file_lines_are_sent_byte_for_byte_keyed_by_customer(tmp_path: Path) -> None:
    f = tmp_path / "events.jsonl"
    f.write_bytes(
        b'{"event_id":"a","customer_id":"cust-1","quantity":0.1000000000001}\r\n'  # exact digits kept
        b"\n"  # blank lines are skipped
        b"not json\n"  # sent as is, without a key: the job dead-letters it
        b'{"customer_id": 7}\n'  # a non-string customer id gives no key
    )
    recs = list(records_from_jsonl(f))
    assert [r.value for r in recs] == [
        b'{"event_id":"a","customer_id":"cust-1","quantity":0.1000000000001}',
        b"not json",
        b'{"customer_id": 7}',
    ]
    assert [r.key for r in recs] == [b"cust-1", b"", b""]


def test_a_lone_surrogate_in_customer_id_is_sent_not_a_crash(tmp_path: Path) -> None:
    # the job rejects it (invalid_character); produce must still send it, keyed by its bytes
    f = tmp_path / "events.jsonl"
    f.write_bytes(b'{"event_id":"e","customer_id":"c\\ud800"}\n')
    (rec,) = records_from_jsonl(f)
    assert rec.value == b'{"event_id":"e","customer_id":"c\\ud800"}' and rec.key == b"c\xed\xa0\x80"
