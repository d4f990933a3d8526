"""The package's shape: no import circle, and production code that never depends on the twin."""

from __future__ import annotations

import grimp
import pytest


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    """Every import in tidegate, including those under TYPE_CHECKING and inside functions."""
    return grimp.build_graph("tidegate", cache_dir=None)


def test_the_package_has_no_import_cycle(graph: grimp.ImportGraph) -> None:
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle(graph: grimp.ImportGraph) -> None:
    graph.add_import(importer="tidegate.config", imported="tidegate.http.app")
    try:
        assert "tidegate.config -> tidegate.http.app -> tidegate.config" in cycles(graph)
    finally:
        graph.remove_import(importer="tidegate.config", imported="tidegate.http.app")


def cycles(graph: grimp.ImportGraph) -> list[str]:
    """Each direct import `a -> b` for which b also reaches a, with b's shortest chain to a."""
    found = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if graph.chain_exists(importer=imported, imported=module):
                chain = graph.find_shortest_chain(importer=imported, imported=module)
                found.append(f"{module} -> {' -> '.join(chain or ())}")
    return found


def test_no_module_imports_the_twin(graph: grimp.ImportGraph) -> None:
    # core.load picks the twin by name at run time; production code never depends on the oracle.
    assert graph.find_modules_that_directly_import("tidegate._twin") == set()


def test_the_entrances_and_the_pipeline_import_neither_other(graph: grimp.ImportGraph) -> None:
    assert entrance_imports(graph) == []


def test_the_entrance_check_finds_an_import(graph: grimp.ImportGraph) -> None:
    graph.add_import(importer="tidegate.http.gateway", imported="tidegate.nats.edge")
    try:
        assert entrance_imports(graph) == ["tidegate.http -> tidegate.nats"]
    finally:
        graph.remove_import(importer="tidegate.http.gateway", imported="tidegate.nats.edge")


def entrance_imports(graph: grimp.ImportGraph) -> list[str]:
    """Direct imports between the entrances (http/, nats/), or from the pipeline below them
    into one: the per-message steps are shared, not copied. (Any of them may import config,
    which holds NATS mode's settings.)"""
    pairs = [
        ("tidegate.http", "tidegate.nats"),
        ("tidegate.nats", "tidegate.http"),
        ("tidegate.pipeline", "tidegate.http"),
        ("tidegate.pipeline", "tidegate.nats"),
    ]
    return [
        f"{importer} -> {imported}"
        for importer, imported in pairs
        if graph.direct_import_exists(importer=importer, imported=imported, as_packages=True)
    ]
