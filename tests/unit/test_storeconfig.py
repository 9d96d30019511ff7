"""The controller's store selection (``store``, ``store_prefix``, ``etcd_*``)
and the etcd module's error boundary, without an etcd."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from etcd3gw import exceptions as etcd_exc

from controller.errors import CapacityError, ConfigError, FieldError, StoreError, UnavailableError
from controller.fleet.config import parse_config
from controller.fleet.etcd import CompactedError, from_etcd_error, parse_endpoints, prefix_end


def test_endpoints() -> None:
    assert parse_endpoints("etcd://10.0.0.1:2379,10.0.0.2,[fd00::1]:2380") == (
        "10.0.0.1:2379", "10.0.0.2:2379", "[fd00::1]:2380")
    for bad in ("http://a:1", "etcd://", "etcd://a:99999", "etcd://a:1/x", "a:1"):
        with pytest.raises(FieldError) as info:
            parse_endpoints(bad)
        assert info.value.path == "store", bad
    assert prefix_end(b"/bw/") == b"/bw0" and prefix_end(b"a\xff") == b"b"


def test_store_keys(tmp_path: Path) -> None:
    assert parse_config({}).store == "sqlite"
    cfg = parse_config({"store": "etcd://127.0.0.1:2379,127.0.0.2:2379", "store_prefix": "/fleet-a/"})
    assert cfg.store.startswith("etcd://") and cfg.store_prefix == "/fleet-a/" and cfg.etcd_tls is None
    ca, cert, key = (tmp_path / n for n in ("ca.pem", "c.pem", "k.pem"))
    for f in (ca, cert, key):
        f.write_text("x")
    tls = parse_config({"store": "etcds://h:2379", "etcd_ca": str(ca), "etcd_cert": str(cert),
                        "etcd_key": str(key)}).etcd_tls
    assert tls is not None and (tls.ca, tls.cert, tls.key) == (ca, cert, key)
    cases: list[tuple[dict[str, object], str]] = [
             ({"store": "postgres://x"}, "store"), ({"store": 3}, "store"),
             ({"store": "etcd://h", "store_prefix": "bw"}, "store_prefix"),
             ({"store": "etcds://h"}, "etcd_ca"),
             ({"store": "etcd://h", "etcd_cert": str(cert), "etcd_key": str(key)}, "etcd_ca"),
             ({"store": "etcd://h", "etcd_ca": str(ca), "etcd_cert": str(cert)}, "etcd_key"),
             ({"store": "etcd://h", "etcd_ca": str(tmp_path / "missing.pem")}, "etcd_ca"),
             ({"etcd_ca": str(ca)}, "etcd_ca")]
    for doc, key_name in cases:
        with pytest.raises(ConfigError) as info:
            parse_config(doc, "controller.toml")
        assert info.value.path == key_name, (doc, info.value)


def _answered(code: int, message: str, cls: type[etcd_exc.Etcd3Exception]) -> etcd_exc.Etcd3Exception:
    return cls(json.dumps({"error": message, "message": message, "code": code}), "reason")


def _unreachable() -> etcd_exc.Etcd3Exception:
    try:
        try:
            raise requests.exceptions.ConnectionError("refused")
        except requests.exceptions.ConnectionError as ex:
            raise etcd_exc.ConnectionFailedError(str(ex)) from None
    except etcd_exc.ConnectionFailedError as exc:
        exc.__context__ = requests.exceptions.ConnectionError("refused")
        return exc


def test_errors_converted_at_one_boundary() -> None:
    table = [
        (_unreachable(), UnavailableError, "cannot reach etcd"),
        (_answered(14, "etcdserver: request timed out", etcd_exc.ConnectionFailedError), UnavailableError,
         "quorum"),
        (_answered(14, "etcdserver: no leader", etcd_exc.ConnectionFailedError), UnavailableError,
         "no leader"),
        (etcd_exc.ConnectionTimeoutError("read timed out"), UnavailableError, "in time"),
        (_answered(3, "etcdserver: too many operations in txn request", etcd_exc.Etcd3Exception),
         CapacityError, "--max-txn-ops"),
        (_answered(3, "etcdserver: request is too large", etcd_exc.Etcd3Exception), CapacityError,
         "--max-request-bytes"),
        (_answered(11, "etcdserver: mvcc: required revision has been compacted", etcd_exc.Etcd3Exception),
         CompactedError, "compacted"),
        (_answered(3, "etcdserver: duplicate key given in txn request", etcd_exc.Etcd3Exception), StoreError,
         "duplicate key"),
    ]
    for exc, cls, words in table:
        got = from_etcd_error(exc, "etcd://h:2379/bw/: create rules")
        assert type(got) is cls and words in str(got), (exc, got)
        assert str(got).startswith("etcd://h:2379/bw/: create rules: ")
