"""Dead-letter records: where they came from reads back from the headers they carry."""

import pytest

from processor.deadletter import (
    ERROR_MESSAGE,
    MAX_MESSAGE_BYTES,
    Origin,
    dead_letter_record,
)


def test_the_origin_reads_back_from_the_headers_written() -> None:
    record = dead_letter_record(b"o1", b"{}", "orders.events/2/17", "unknown_sku", "no SKU Z")

    assert Origin.from_headers(dict(record.headers)) == Origin("orders.events", 2, 17)


def test_a_record_from_no_input_partition_has_no_origin() -> None:
    record = dead_letter_record(b"o1", b"{}", "history.jsonl:3", "unknown_sku", "no SKU Z")

    assert Origin.from_headers(dict(record.headers)) is None


@pytest.mark.parametrize("character", ["é", "€", "😀"])
def test_a_long_error_message_is_cut_between_utf8_characters(character: str) -> None:
    for lead in range(len(character.encode())):  # puts the cut at each byte of a character
        message = "x" * lead + character * MAX_MESSAGE_BYTES

        record = dead_letter_record(b"o1", b"{}", "orders.events/2/17", "unknown_sku", message)

        header = dict(record.headers)[ERROR_MESSAGE]
        assert isinstance(header, bytes)
        assert MAX_MESSAGE_BYTES - len(character.encode()) < len(header) <= MAX_MESSAGE_BYTES
        assert message.startswith(header.decode())
