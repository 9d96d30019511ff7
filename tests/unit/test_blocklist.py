"""controller.rules.blocklist: the formats operators feed `breakwater deny add
--file` (plain CIDR lists, Spamhaus DROP, FireHOL netsets), and errors that
name the file and line."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from controller.errors import InputError
from controller.rules.blocklist import parse_lines, read_file

SPAMHAUS = """\
; Spamhaus DROP List 2024/05/01 - (c) 2024 The Spamhaus Project SLU
; https://www.spamhaus.org/drop/drop.txt
; Last-Modified: Wed, 01 May 2024 12:00:00 GMT
1.10.16.0/20 ; SBL256894
1.19.0.0/16 ; SBL434604
2001:db8:1000::/36 ; SBL999999
"""

FIREHOL = """\
#
# firehol_level1
#
# ipv4 hash:net ipset
#
198.51.100.7
203.0.113.0/24

192.0.2.0/25
"""


def strs(prefixes: Sequence[object]) -> list[str]:
    return [str(p) for p in prefixes]


def test_spamhaus_drop() -> None:
    assert strs(parse_lines(SPAMHAUS.splitlines())) == ["1.10.16.0/20", "1.19.0.0/16", "2001:db8:1000::/36"]


def test_firehol_netset() -> None:
    assert strs(parse_lines(FIREHOL.splitlines())) == ["198.51.100.7", "203.0.113.0/24", "192.0.2.0/25"]


def test_plain_list_with_windows_line_ends_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_bytes("\ufeff198.18.0.1\r\n198.18.1.0/24  # a comment\r\n\r\n2001:db8::1\r\n".encode())
    assert strs(read_file(path)) == ["198.18.0.1", "198.18.1.0/24", "2001:db8::1"]


def test_empty_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_text("# nothing yet\n\n")
    assert read_file(path) == []


@pytest.mark.parametrize(("text", "where"), [
    ("198.18.0.1\nnot-an-address\n", ":2: "),
    ("198.18.0.1\n198.18.0.1/33\n", ":2: "),
    ("10.0.0.5/8 ; host bits\n", ":1: "),
])
def test_a_bad_line_names_file_and_line(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "feed.txt"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        read_file(path)
    assert str(info.value).startswith(f"{path}{where}"), str(info.value)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"cannot read \(No such file or directory\)"):
        read_file(tmp_path / "absent.txt")
    binary = tmp_path / "feed.gz"
    binary.write_bytes(b"\x1f\x8b\x08\x00\xff")
    with pytest.raises(InputError, match=r"feed\.gz: not a text file"):
        read_file(binary)
