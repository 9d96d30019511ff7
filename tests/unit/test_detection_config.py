"""controller.detection.config: the [detect] and [mitigate] tables, their checks, the docs listing them."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from controller.addresses import parse_prefix
from controller.detection.config import DetectConfig, MitigateConfig, VectorThreshold
from controller.detection.events import DEST_VECTORS
from controller.errors import InputError

# --- [detect] --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DetectConfig(start_intervals=0), r"^start_intervals: 0 is out of range 1..1000$"),
        (lambda: DetectConfig(end_fraction=1.5), r"^end_fraction: 1.5 is out of range; must be above 0"),
        (lambda: DetectConfig(window=0), r"^window: 0 is out of range 0.1..3600$"),
        (lambda: VectorThreshold(pps=0), r"^pps: 0 is out of range; must be above 0"),
        (lambda: DetectConfig(many_max_source_pps=30_000),
         r"^many_max_source_pps: 30000 is not below source_pps 20000"),
        (lambda: DetectConfig(many_source=VectorThreshold(5000, min_share=0.5)),
         r"^many_source.min_share: not used by this vector"),
        (lambda: DetectConfig.from_dict({"strat_intervals": 3}),
         r"^strat_intervals: unknown key \(did you mean 'start_intervals'\?\)"),
        (lambda: DetectConfig.from_dict({"syn": {"pps": -5}}), r"^syn.pps: -5 is out of range"),
        (lambda: DetectConfig.from_dict({"udp": {"factor": 2}}), r"^udp.pps: missing"),
        (lambda: DetectConfig.from_dict({"icmp": {"pps": 1, "facter": 2}}),
         r"^icmp.facter: unknown key \(did you mean 'factor'\?\)"),
        (lambda: DetectConfig.from_dict({"start_intervals": "3"}),
         r'^start_intervals: expected an integer, got "3"$'),
    ],
)
def test_detect_config_errors_name_the_field(make: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        make()  # type: ignore[operator]


def test_detect_config_from_dict() -> None:
    cfg = DetectConfig.from_dict({"start_intervals": 2, "syn": {"pps": 5000, "factor": 5, "min_share": 0.3}})
    assert cfg.start_intervals == 2
    assert cfg.syn == VectorThreshold(5000, 5, 0.3)
    assert cfg.ack == DetectConfig().ack
    assert set(DEST_VECTORS) <= {f for f in DetectConfig.__dataclass_fields__}


# --- [mitigate] ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"aggregate_v4": 16}, r"^aggregate_v4: /16 is broader than broadest_v4 /24"),
        ({"broadest_v4": 0}, r"^broadest_v4: 0 is out of range 8..32$"),
        ({"broadest_v6": 8}, r"^broadest_v6: 8 is out of range 16..128$"),
        ({"allowlist": ["198.18.0.5/24"]}, r"^allowlist\[0\]: '198.18.0.5/24' has host bits set"),
        ({"reflection_action": "block"}, r"^reflection_action: 'block' is not one of rate_limit, drop"),
        ({"reflection_ports": ()}, r"^reflection_ports: expected a non-empty list"),
        ({"max_rules_total": 0}, r"^max_rules_total: 0 is out of range 1..16383$"),
        ({"rule_ttl": 0}, r"^rule_ttl: 0 is out of range 1..86400$"),
        ({"monitor": "yes"}, r"^monitor: expected true or false"),
    ],
)
def test_mitigate_config_errors_name_the_field(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        MitigateConfig(**kwargs)


def test_mitigate_config_from_dict() -> None:
    cfg = MitigateConfig.from_dict({"allowlist": ["192.0.2.0/24"], "monitor": True})
    assert cfg.allowlist == (parse_prefix("192.0.2.0/24"),) and cfg.monitor
    with pytest.raises(InputError, match=r"alowlist: unknown key \(did you mean 'allowlist'\?\)"):
        MitigateConfig.from_dict({"alowlist": []})


def test_docs_name_every_setting_and_the_vector_defaults() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "detection.md").read_text()
    for cls in (DetectConfig, MitigateConfig):
        for f in fields(cls):
            assert f"`{f.name}`" in text, f"docs/detection.md does not mention {cls.__name__}.{f.name}"
    cfg = DetectConfig()
    for vector in DEST_VECTORS:
        th = cfg.threshold(vector)
        share = "—" if vector == "many_source" else f"{th.min_share:g}"
        row = f"| {th.pps:,.0f} | {th.factor:g} | {share} | {th.ceiling:,.0f} |".replace(",", " ")
        rows = [x for x in text.splitlines() if x.startswith(f"| `{vector}` |") and x.count("|") == 7]
        assert len(rows) == 1 and rows[0].endswith(row), (vector, rows, row)
