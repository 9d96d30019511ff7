"""The committed code in breakwater/v1/ is what scripts/gen_proto.py makes of
proto/breakwater/v1/*.proto today, and every proto element is commented."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import descriptor_pb2

from .headers import PROTO_DIR, REPO

SCRIPT = REPO / "scripts" / "gen_proto.py"


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_proto", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_proto"] = module
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_current(gen: ModuleType) -> None:
    problems = gen.stale(REPO)
    assert not problems, "generated code is stale: run make proto\n  " + "\n  ".join(problems)


def test_every_proto_has_its_modules(gen: ModuleType) -> None:
    names = {p.stem for p in (PROTO_DIR / "breakwater" / "v1").glob("*.proto")}
    assert {"rule", "rule_service", "node", "node_service", "telemetry_service", "event_service",
            "sync_service", "reasons"} <= names
    for name in sorted(names):
        module = importlib.import_module(f"breakwater.v1.{name}_pb2")
        assert module.DESCRIPTOR.package == "breakwater.v1"
        assert (REPO / "breakwater" / "v1" / f"{name}_pb2.pyi").exists()
        if module.DESCRIPTOR.services_by_name:
            importlib.import_module(f"breakwater.v1.{name}_pb2_grpc")
            assert (REPO / "breakwater" / "v1" / f"{name}_pb2_grpc.pyi").exists()


def test_generators_are_pinned(gen: ModuleType) -> None:
    """The dev extra pins the generators exactly, and the runtime floor is
    no lower than what generated the code."""
    pins = gen.pinned_versions()
    assert set(pins) == {"grpcio-tools", "mypy-protobuf"}
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"grpcio>={pins['grpcio-tools']}" in deps
    stamped = (REPO / "breakwater" / "v1" / "rule_service_pb2_grpc.py").read_text()
    assert f"GRPC_GENERATED_VERSION = '{pins['grpcio-tools']}'" in stamped


def test_check_mode_reports_a_stale_file(gen: ModuleType, tmp_path: Path) -> None:
    gen.write(tmp_path)
    assert gen.stale(tmp_path) == []
    target = tmp_path / "breakwater" / "v1" / "rule_pb2.pyi"
    target.write_text(target.read_text() + "# edited\n")
    (tmp_path / "breakwater" / "v1" / "gone_pb2.py").write_text("")
    assert gen.stale(tmp_path) == [
        "breakwater/v1/gone_pb2.py: not generated from any .proto (remove it)",
        "breakwater/v1/rule_pb2.pyi: differs",
    ]
    gen.write(tmp_path)  # removes what no .proto makes any more
    assert gen.stale(tmp_path) == []


# --- every element commented (buf lint's COMMENTS, without buf) ----------------------


def _descriptor_set(tmp_path: Path) -> descriptor_pb2.FileDescriptorSet:
    from grpc_tools import protoc

    out = tmp_path / "set.binpb"
    files = sorted(str(p) for p in (PROTO_DIR / "breakwater" / "v1").glob("*.proto"))
    wkt = Path(protoc.__file__).parent / "_proto"
    rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"-I{wkt}", "--include_source_info",
                      f"--descriptor_set_out={out}", *files])
    assert rc == 0
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


Located = Iterator[tuple[tuple[int, ...], str]]


def _elements(f: descriptor_pb2.FileDescriptorProto) -> Located:
    """(source path, name) of every message, field, oneof, enum, value, service, method."""
    def enum(path: tuple[int, ...], e: descriptor_pb2.EnumDescriptorProto) -> Located:
        yield path, e.name
        for i, v in enumerate(e.value):
            yield (*path, 2, i), f"{e.name}.{v.name}"

    def message(path: tuple[int, ...], m: descriptor_pb2.DescriptorProto, outer: str) -> Located:
        name = f"{outer}{m.name}"
        yield path, name
        for i, fd in enumerate(m.field):
            yield (*path, 2, i), f"{name}.{fd.name}"
        for i, o in enumerate(m.oneof_decl):
            if not o.name.startswith("_"):  # synthetic oneof of a proto3 optional field
                yield (*path, 8, i), f"{name}.{o.name}"
        for i, nested in enumerate(m.nested_type):
            if not nested.options.map_entry:
                yield from message((*path, 3, i), nested, f"{name}.")
        for i, e in enumerate(m.enum_type):
            yield from enum((*path, 4, i), e)

    for i, m in enumerate(f.message_type):
        yield from message((4, i), m, "")
    for i, e in enumerate(f.enum_type):
        yield from enum((5, i), e)
    for i, s in enumerate(f.service):
        yield (6, i), s.name
        for j, rpc in enumerate(s.method):
            yield (6, i, 2, j), f"{s.name}.{rpc.name}"


def test_every_element_is_commented(tmp_path: Path) -> None:
    missing = []
    count = 0
    for f in _descriptor_set(tmp_path).file:
        comments = {tuple(loc.path): loc.leading_comments.strip() for loc in f.source_code_info.location}
        for path, name in _elements(f):
            count += 1
            if not comments.get(path):
                missing.append(f"{f.name}: {name}")
    assert count > 300
    assert not missing, "no leading comment:\n  " + "\n  ".join(missing)


def test_enums_start_with_unspecified(tmp_path: Path) -> None:
    for f in _descriptor_set(tmp_path).file:
        enums = list(f.enum_type) + [e for m in f.message_type for e in m.enum_type]
        for e in enums:
            zero = e.value[0]
            assert zero.number == 0, f"{f.name}: {e.name} does not start at 0"
            assert zero.name.endswith("_UNSPECIFIED"), f"{f.name}: {e.name}'s 0 is {zero.name}"


def test_list_requests_say_their_page_size(tmp_path: Path) -> None:
    """AIP-158: every page_size documents its default and maximum."""
    seen = 0
    for f in _descriptor_set(tmp_path).file:
        comments = {tuple(loc.path): loc.leading_comments for loc in f.source_code_info.location}
        for i, m in enumerate(f.message_type):
            for j, fd in enumerate(m.field):
                if fd.name == "page_size":
                    seen += 1
                    text = comments[(4, i, 2, j)]
                    assert "default" in text and "at most" in text, f"{m.name}.page_size: {text!r}"
                    names = {x.name for x in m.field}
                    assert "page_token" in names, m.name
    assert seen >= 4
