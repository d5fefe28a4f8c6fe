"""Dead-letter records: where they came from reads back from the headers they carry."""

import pytest

from processor.deadletter import (
    ERROR_CLASS,
    ERROR_MESSAGE,
    KEY_TRUNCATED,
    MAX_KEY_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_RECORD_BYTES,
    SOURCE_OFFSET,
    SOURCE_PARTITION,
    SOURCE_TOPIC,
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


def test_the_headers_carry_the_reason_and_the_message() -> None:
    record = dead_letter_record(b"o1", b"{}", "orders.events/2/17", "unknown_sku", "no SKU Z")

    headers = dict(record.headers)
    assert (headers[ERROR_CLASS], headers[ERROR_MESSAGE]) == (b"unknown_sku", b"no SKU Z")


def test_an_origin_reads_back_from_its_text() -> None:
    origin = Origin("orders.events", 2, 17)

    assert Origin.parse(str(origin)) == origin


@pytest.mark.parametrize(
    "text",
    ["history.jsonl:3", "2/17", "/2/17", "orders.events/p2/17", "orders.events/2/o17", ""],
)
def test_text_without_a_topic_a_partition_and_an_offset_is_no_origin(text: str) -> None:
    assert Origin.parse(text) is None


@pytest.mark.parametrize(("key", "value"), [(None, b"{}"), (b"o1", None), (None, None)])
def test_a_record_without_a_key_or_a_value_dead_letters_without_one(
    key: bytes | None, value: bytes | None
) -> None:
    record = dead_letter_record(key, value, "orders.events/2/17", "bad_magic", "empty message")

    assert (record.key, record.value) == (key, value)
    assert not {KEY_TRUNCATED, VALUE_TRUNCATED} & dict(record.headers).keys()


@pytest.mark.parametrize("key_bytes", [MAX_KEY_BYTES, MAX_KEY_BYTES + 1])
def test_a_dead_letter_keeps_max_key_bytes_of_the_key_and_says_so_only_if_it_cut(
    key_bytes: int,
) -> None:
    key = b"k" * key_bytes

    record = dead_letter_record(key, b"{}", "orders.events/2/17", "bad_magic", "starts 7b7d")

    assert record.key == key[:MAX_KEY_BYTES]
    assert dict(record.headers).get(KEY_TRUNCATED) == (
        str(key_bytes).encode() if key_bytes > MAX_KEY_BYTES else None
    )


def test_a_value_as_long_as_a_cut_one_is_kept_whole_and_one_byte_longer_is_cut() -> None:
    """The cut keeps all the room there is, and cuts nothing that fits."""

    def dead_letter(size: int) -> DeadLetterRecord:
        return dead_letter_record(b"o1", b"v" * size, "orders.events/2/17", "bad_magic", "7676")

    kept = len(dead_letter(MAX_RECORD_BYTES).value or b"")

    whole, cut = dead_letter(kept), dead_letter(kept + 1)

    assert (len(whole.value or b""), len(cut.value or b"")) == (kept, kept)
    assert VALUE_TRUNCATED not in dict(whole.headers)
    assert dict(cut.headers)[VALUE_TRUNCATED] == str(kept + 1).encode()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {SOURCE_TOPIC: b"orders.events", SOURCE_PARTITION: b"\xff", SOURCE_OFFSET: b"17"},
    ],
    ids=["none", "not-utf8"],
)
def test_headers_that_do_not_spell_an_origin_give_none(
    headers: dict[str, str | bytes | None],
) -> None:
    assert Origin.from_headers(headers) is None
