"""Dead-letter records: where they came from reads back from the headers they carry."""

import pytest

from processor.deadletter import (
    ERROR_MESSAGE,
    KEY_TRUNCATED,
    MAX_KEY_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_RECORD_BYTES,
    VALUE_TRUNCATED,
    DeadLetterRecord,
    Origin,
    dead_letter_record,
)


def _size(record: DeadLetterRecord) -> int:
    headers = sum(len(name) + len(value or b"") for name, value in record.headers)
    return len(record.key or b"") + len(record.value or b"") + headers


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


@pytest.mark.parametrize(("key_bytes", "value_bytes"), [(4, 999_990), (200_000, 999_990)])
def test_an_input_too_big_for_a_dead_letter_keeps_its_first_bytes_and_says_so(
    key_bytes: int, value_bytes: int
) -> None:
    key, value = b"k" * key_bytes, b"v" * value_bytes

    record = dead_letter_record(key, value, "orders.events/2/17", "bad_magic", "starts 7676")

    assert _size(record) <= MAX_RECORD_BYTES
    assert record.value is not None
    assert record.key is not None
    assert value.startswith(record.value)
    assert key.startswith(record.key)
    headers = dict(record.headers)
    assert headers[VALUE_TRUNCATED] == str(value_bytes).encode()
    assert headers.get(KEY_TRUNCATED) == (
        str(key_bytes).encode() if key_bytes > MAX_KEY_BYTES else None
    )


def test_a_dead_letter_that_fits_is_kept_whole() -> None:
    value = b"v" * (MAX_RECORD_BYTES - 1_000)

    record = dead_letter_record(b"o1", value, "orders.events/2/17", "bad_magic", "starts 7676")

    assert (record.key, record.value) == (b"o1", value)
    assert VALUE_TRUNCATED not in dict(record.headers)
