"""controller.addresses: prefixes as operators type them, and as map keys."""

from __future__ import annotations

import ctypes
import ipaddress

import pytest

from controller.addresses import Prefix, parse_prefix
from controller.dataplane import abi, swap
from controller.errors import InputError


@pytest.mark.parametrize(
    ("text", "family", "plen", "exact", "shown"),
    [
        ("198.18.0.1", 4, 32, True, "198.18.0.1"),
        ("198.18.0.1/32", 4, 32, True, "198.18.0.1"),
        ("198.18.0.0/24", 4, 24, False, "198.18.0.0/24"),
        ("198.18.0.0/15", 4, 15, False, "198.18.0.0/15"),
        ("0.0.0.0/0", 4, 0, False, "0.0.0.0/0"),
        ("  198.18.0.0/24 ", 4, 24, False, "198.18.0.0/24"),
        ("2001:db8::1", 6, 128, True, "2001:db8::1"),
        ("2001:db8::1/128", 6, 128, True, "2001:db8::1"),
        ("2001:db8::/32", 6, 32, False, "2001:db8::/32"),
        ("2001:DB8:0:1::/64", 6, 64, False, "2001:db8:0:1::/64"),
        ("::/0", 6, 0, False, "::/0"),
    ],
)
def test_valid(text: str, family: int, plen: int, exact: bool, shown: str) -> None:
    p = parse_prefix(text)
    assert (p.family, p.network.prefixlen, p.is_exact, str(p)) == (family, plen, exact, shown)


@pytest.mark.parametrize(
    ("text", "corrected"),
    [
        ("198.18.0.5/24", "198.18.0.0/24"),
        ("198.19.255.255/15", "198.18.0.0/15"),
        ("2001:db8::1/32", "2001:db8::/32"),
        ("2001:db8:0:1::10/64", "2001:db8:0:1::/64"),
    ],
)
def test_host_bits_set_names_the_corrected_prefix(text: str, corrected: str) -> None:
    with pytest.raises(InputError, match="host bits set") as info:
        parse_prefix(text)
    assert f"did you mean {corrected}?" in str(info.value)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize(
    "text",
    ["", "   ", "garbage", "198.18.0", "198.18.0.256", "198.18.0.0/33", "198.18.0.0/-1",
     "2001:db8::/129", "2001:db8:::1", "198.18.0.0/24/1", "fe80::1%eth0/64x"],
)
def test_garbage(text: str) -> None:
    with pytest.raises(InputError) as info:
        parse_prefix(text)
    assert "expected an IPv4/IPv6 address or prefix" in str(info.value) or (
        "is not an IPv4/IPv6 address or prefix" in str(info.value))


def test_field_name_in_message() -> None:
    with pytest.raises(InputError, match=r"^rules\[3\]\.source: 'nope'"):
        parse_prefix("nope", field="rules[3].source")


def test_input_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_prefix("nope")


@pytest.mark.parametrize("slot", [0, 1])
@pytest.mark.parametrize("text", ["198.18.4.0/22", "2001:db8:4::/48", "0.0.0.0/0", "::/0"])
def test_lpm_key_layout_and_round_trip(text: str, slot: int) -> None:
    """LPM keys (built by controller.dataplane.swap, the one writer of the tries): the
    slot byte leads the data and prefixlen counts its 8 bits."""
    p = parse_prefix(text)
    name = "deny_pfx_v4" if p.family == 4 else "deny_pfx_v6"
    key = swap.lpm_key(name, slot, (p.network.prefixlen, p.network.network_address.packed))
    size = abi.LpmV4 if p.family == 4 else abi.LpmV6
    alen = 4 if p.family == 4 else 16
    assert len(key) == ctypes.sizeof(size)
    assert int.from_bytes(key[:4], "little") == 8 + p.network.prefixlen
    assert key[4] == slot
    assert key[5 : 5 + alen] == p.network.network_address.packed
    assert key[5 + alen :] == bytes(3)
    assert Prefix.from_parts(key[5 : 5 + alen], int.from_bytes(key[:4], "little") - 8) == p


@pytest.mark.parametrize("text", ["198.18.0.10", "2001:db8::10"])
def test_exact_key_round_trip(text: str) -> None:
    p = parse_prefix(text)
    assert p.exact_key() == ipaddress.ip_address(text).packed
    assert Prefix.from_exact_key(p.exact_key()) == p


def test_prefixes_sort_by_network() -> None:
    ps = [parse_prefix(t) for t in ("198.18.1.0/24", "198.18.0.0/24", "198.18.0.0/16")]
    assert [str(p) for p in sorted(ps)] == ["198.18.0.0/16", "198.18.0.0/24", "198.18.1.0/24"]
