"""controller.api.pages: page sizes, page tokens, and one page taken off a
lazy listing (the services' pages over a real channel are test_api's)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from controller.api.pages import MAX_PAGE_SIZE, decode_page_token, encode_page_token, page_size, take_page
from controller.errors import FieldError


def test_page_tokens_round_trip() -> None:
    token = encode_page_token("rules", "abc", "r7")
    assert decode_page_token(token, "rules", "abc") == "r7"
    assert decode_page_token("", "rules", "abc") is None
    for bad in ("%%%", "e30", token[:-3]):
        with pytest.raises(FieldError, match="not a page token"):
            decode_page_token(bad, "rules", "abc")


def test_page_size_default_maximum_and_negative() -> None:
    assert page_size(0, 50) == 50
    assert page_size(7, 50) == 7
    assert page_size(MAX_PAGE_SIZE + 1, 50) == MAX_PAGE_SIZE
    with pytest.raises(FieldError) as info:
        page_size(-1, 50)
    assert info.value.path == "page_size"


def test_take_page_reads_one_past_the_page() -> None:
    read: list[int] = []

    def items(n: int) -> Iterator[int]:
        for i in range(n):
            read.append(i)
            yield i

    assert take_page(items(10), 3) == ([0, 1, 2], True)
    assert read == [0, 1, 2, 3]
    assert take_page(items(3), 3) == ([0, 1, 2], False)
    assert take_page(items(0), 3) == ([], False)
