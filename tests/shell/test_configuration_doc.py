"""Each setting is declared once; docs/configuration.md and `serve --help` come from it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from tidegate.cli import main
from tidegate.config import Config, markdown
from tidegate.nats.settings import NatsSettings
from tidegate.setting import declared

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_docs_configuration_md_is_what_the_declarations_produce() -> None:
    assert DOC.read_text() == markdown(), (
        "docs/configuration.md is out of date; regenerate it with "
        "`PYTHONPATH=python python -m tidegate.config > docs/configuration.md`"
    )


def test_every_field_is_a_declared_setting_with_a_doc() -> None:
    settings = list(declared(Config))
    fields = [f for cls in (Config, NatsSettings) for f in dataclasses.fields(cls)]
    assert len(settings) == len(fields) - 1  # `nats` is the section, not a setting
    assert all(s.doc and s.var.isupper() for s in settings)
    assert len({s.var for s in settings}) == len(settings)


def test_every_variable_is_in_the_doc_with_its_default() -> None:
    doc = DOC.read_text()
    rows = {
        line.split(" | ")[0][3:-1]: line.split(" | ")[1]
        for line in doc.splitlines()
        if line.startswith("| `")
    }
    assert rows.keys() == {name for name, _ in Config.variables()}
    assert (rows["TIDEGATE_PORT"], rows["DATABASE_URL"]) == ("`8080`", "(unset)")
    assert rows["TIDEGATE_INFLUX_CREATE_DB"] == "`1`"
    assert rows["NATS_URL"] == "`nats://127.0.0.1:4222`"


def test_a_derived_default_is_the_declared_default_when_nothing_is_set() -> None:
    cfg = Config.from_env({})
    assert (cfg.buffer_tenant_max_bytes, cfg.durability) == (16 << 20, "wal")
    assert Config.from_env({"TIDEGATE_BUFFER_MAX_BYTES": "400"}).buffer_tenant_max_bytes == 100


def test_the_docs_example_file_is_a_valid_configuration(tmp_path: Path) -> None:
    example = DOC.read_text().split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "tidegate.toml"
    path.write_text(example)
    cfg = Config.from_env({}, file=path)
    assert (cfg.port, cfg.data_dir, cfg.influx_create_db) == (
        8090,
        Path("/var/lib/tidegate"),
        False,
    )


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_help_lists_every_variable_with_its_default_and_meaning(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    listed = capsys.readouterr().out.split("(default, meaning):\n", 1)[1].splitlines()
    assert [line.split()[0] for line in listed] == [name for name, _ in Config.variables()]
    row = next(line.split(maxsplit=2) for line in listed if "NATS_ACK_WAIT_S" in line)
    assert row[1:] == [
        "30.0",
        "consumer AckWait (held messages get in-progress acks every third of it)",
    ]
