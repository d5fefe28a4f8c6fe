"""Dead-letter records: where they came from reads back from the headers they carry."""

from processor.deadletter import Origin, dead_letter_record


def test_the_origin_reads_back_from_the_headers_written() -> None:
    record = dead_letter_record(b"o1", b"{}", "orders.events/2/17", "unknown_sku", "no SKU Z")

    assert Origin.from_headers(dict(record.headers)) == Origin("orders.events", 2, 17)


def test_a_record_from_no_input_partition_has_no_origin() -> None:
    record = dead_letter_record(b"o1", b"{}", "history.jsonl:3", "unknown_sku", "no SKU Z")

    assert Origin.from_headers(dict(record.headers)) is None
