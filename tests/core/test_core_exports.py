"""The rules the core exports to the shell: the compiled core and the twin agree on every one."""

from __future__ import annotations

import ast
import inspect
import json
import re
from pathlib import Path
from typing import Any

import pytest
import tidegate
from hypothesis import given, settings
from hypothesis import strategies as st
from messages import load_core

RUST = load_core("rust")
TWIN = load_core("python")

EXPORTED_VALUES = {
    "REASONS": (
        "INVALID_MSG_TYPE",
        "INVALID_SCHEMA",
        "INVALID_TIMESTAMP",
        "INVALID_METRICS",
        "PAYLOAD_TOO_LARGE",
        "UNAUTHORIZED",
        "SITE_MISMATCH",
        "RATE_LIMITED",
        "BUFFER_FULL",
        "UNAVAILABLE",
    ),
    "MAX_BATCH_MESSAGES": 100,
    "MAX_SHELLY_MESSAGES": 1000,
    "MAX_ID_BYTES": 128,
    "MAX_TENANT_CHARS": 64,
    "TENANT_PATTERN": "^[a-z0-9_-]{1,64}$",
    "MAX_METRICS": 256,
    "DEFAULT_MAX_PAYLOAD_BYTES": 8192,
    "DEFAULT_MAX_FIELDS_PER_TENANT": 10000,
    "SHELLY_REASONS": (
        "INVALID_MESSAGE",
        "INVALID_SRC",
        "INVALID_TIMESTAMP",
        "INVALID_PARAMS",
        "INVALID_READING",
    ),
    "MSG_TYPES": ("telemetry", "heartbeat"),
}


@pytest.mark.parametrize("name", sorted(EXPORTED_VALUES))
def test_both_cores_export_the_same_rule_values(name: str) -> None:
    assert getattr(RUST, name) == getattr(TWIN, name) == EXPORTED_VALUES[name]


def test_each_reason_constant_is_its_own_code() -> None:
    for code in EXPORTED_VALUES["REASONS"]:
        assert getattr(RUST, code) == getattr(TWIN, code) == code


# Characters near every edge of the id and tenant rules, lone surrogates included.
edge_chars = st.sampled_from(
    list("az09_-AZ.,= \\\x00\x1f\x7f\x80\x9f\xa0é\u2028😀\ud800\udc00\udfff")
)
rule_text = st.one_of(
    st.text(st.one_of(edge_chars, st.characters(codec=None)), max_size=140),
    st.text(st.sampled_from("abz09_-"), min_size=60, max_size=70),
    st.text(st.sampled_from("aé😀"), min_size=30, max_size=130),
)


@settings(max_examples=1000, deadline=None)
@given(s=rule_text)
def test_valid_tenant_and_valid_id_agree_on_any_str(s: str) -> None:
    assert RUST.valid_tenant(s) == TWIN.valid_tenant(s)
    assert RUST.valid_id(s) == TWIN.valid_id(s)


@pytest.mark.parametrize("core", [RUST, TWIN], ids=["rust", "python"])
@pytest.mark.parametrize(
    ("s", "tenant", "id_"),
    [
        ("acme", True, True),
        ("a" * 64, True, True),
        ("a" * 65, False, True),
        ("a" * 128, False, True),
        ("a" * 129, False, False),
        ("é" * 64, False, True),
        ("é" * 65, False, False),
        ("", False, False),
        ("Acme", False, True),
        ("acme\n", False, False),
        ("dev 1,x=y", False, True),
        ("a\\b", False, False),
        ("a\x85", False, False),
        ("a\ud800", False, False),
    ],
)
def test_tenant_and_id_rules(core: object, s: str, tenant: bool, id_: bool) -> None:
    assert (core.valid_tenant(s), core.valid_id(s)) == (tenant, id_)  # type: ignore[attr-defined]


def test_tenant_pattern_is_the_tenant_rule_for_whole_strings() -> None:
    # `\Z`: Python's `$` would also match before a final newline.
    pattern = re.compile(RUST.TENANT_PATTERN.removesuffix("$") + r"\Z")
    for s in ["acme", "a" * 64, "a" * 65, "", "Acme", "acme\n", "a-b_c"]:
        assert (pattern.match(s) is not None) == RUST.valid_tenant(s)


@pytest.mark.parametrize("core", [RUST, TWIN], ids=["rust", "python"])
def test_reason_detail_explains_each_validation_reason(core: object) -> None:
    details = {r: core.reason_detail(r) for r in core.REASONS[:4]}  # type: ignore[attr-defined]
    assert details == {
        "INVALID_MSG_TYPE": "msg_type must be telemetry or heartbeat",
        "INVALID_SCHEMA": "the message does not match the schema (ids, site_id, seq)",
        "INVALID_TIMESTAMP": "ts must be an RFC 3339 timestamp within InfluxDB's range",
        "INVALID_METRICS": "metrics must be an object of at most 256 numeric or boolean values",
    }


@pytest.mark.parametrize("core", [RUST, TWIN], ids=["rust", "python"])
@pytest.mark.parametrize(
    ("reason", "error"),
    [
        ("BUFFER_FULL", '"BUFFER_FULL" is not a validation reason code'),
        ("PAYLOAD_TOO_LARGE", '"PAYLOAD_TOO_LARGE" is not a validation reason code'),
        ("invalid_schema", 'unknown reason code "invalid_schema"'),
        ('a"\n', 'unknown reason code "a"\n"'),
    ],
)
def test_reason_detail_refuses_other_codes(core: object, reason: str, error: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(error)}$"):
        core.reason_detail(reason)  # type: ignore[attr-defined]


# -- the API: stub, compiled core and twin have the same names and signatures ------------------

STUB = ast.parse((Path(tidegate.__file__).parent / "_core.pyi").read_text())
# The write-ahead log and the LP file appends are I/O, not rules, and only the compiled core
# has them: config refuses TIDEGATE_DURABILITY=wal with the Python core, and the file sink
# imports its appends from the compiled core whichever core parses.
COMPILED_ONLY = frozenset({"FileAppender", "Wal", "WalFull", "WalUnavailable", "append_file"})


def stub_all() -> list[str]:
    [names] = [
        n.value
        for n in STUB.body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "__all__"
    ]
    assert isinstance(names, ast.List)
    return [ast.literal_eval(e) for e in names.elts]


def stub_params(f: ast.FunctionDef) -> list[tuple[str, object]]:
    """`(name, default)` per parameter, `self`/`cls` left out; `...` for no default."""
    args = f.args.args
    defaults = [...] * (len(args) - len(f.args.defaults)) + [
        ast.literal_eval(d) for d in f.args.defaults
    ]
    return [(a.arg, d) for a, d in zip(args, defaults, strict=True) if a.arg not in ("self", "cls")]


def runtime_params(obj: Any) -> list[tuple[str, object]]:
    params = inspect.signature(obj).parameters.values()
    return [
        (p.name, ... if p.default is p.empty else p.default)
        for p in params
        if p.name not in ("self", "cls")
    ]


def instances(core: Any, tmp: Path) -> dict[str, object]:
    body = json.dumps({"messages": [{"src": "d", "timestamp": 1, "params": {}}]}).encode()
    out = {
        "Batch": core.parse_batch(body, 0),
        "ShellyBatch": core.parse_shelly(body, 10),
        "TenantBuffers": core.TenantBuffers(),
        "FieldTypes": core.FieldTypes(),
        "BodyError": core.BodyError("x"),
    }
    if core is RUST:
        out["Wal"] = RUST.Wal(RUST.TenantBuffers(), tmp)
    return out


def test_stub_all_lists_every_public_name_of_both_cores() -> None:
    public = stub_all()
    assert set(public) <= set(dir(RUST))
    assert set(public) - COMPILED_ONLY <= set(dir(TWIN))
    assert sorted(n for n in dir(RUST) if not n.startswith("_")) == sorted(public)


@pytest.mark.parametrize("core", [RUST, TWIN], ids=["rust", "python"])
def test_both_cores_have_the_stubs_signatures(core: Any, tmp_path: Path) -> None:
    objects = instances(core, tmp_path)
    for node in STUB.body:
        if core is TWIN and getattr(node, "name", None) in COMPILED_ONLY:
            continue
        if isinstance(node, ast.FunctionDef):
            assert runtime_params(getattr(core, node.name)) == stub_params(node), node.name
        if not isinstance(node, ast.ClassDef):
            continue
        cls = getattr(core, node.name)
        for member in node.body:
            if isinstance(member, ast.AnnAssign):
                assert isinstance(member.target, ast.Name)
                assert hasattr(objects.get(node.name, cls), member.target.id), member.target.id
            elif isinstance(member, ast.FunctionDef) and member.decorator_list:
                assert hasattr(objects[node.name], member.name), member.name
            elif isinstance(member, ast.FunctionDef):
                where = f"{node.name}.{member.name}"
                runtime = cls if member.name == "__new__" else getattr(cls, member.name)
                assert runtime_params(runtime) == stub_params(member), where
