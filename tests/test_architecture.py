"""The shape of the code: the layer contract holds, no import cycles, each rule in one place,
the documentation of the metric keys matches the keys."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import metric_keys
from tests.support.projects import REPO


def test_the_import_linter_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    done = subprocess.run([str(lint)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph.modules:
                    continue
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(
                        graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_module_of_the_project_imports_itself_in_a_cycle():
    # imports made only for type checking count too: a cycle hidden behind TYPE_CHECKING is
    # still two modules that cannot be read, or changed, one without the other
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("pipeline", "cache", exclude_type_checking_imports=False)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    class Graph:  # a -> b -> c -> a, d alone
        modules = {"a", "b", "c", "d"}
        edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}

        def find_modules_directly_imported_by(self, module):
            return self.edges[module]

    assert _cycles(Graph()) == [["a", "b", "c"]]


def _documented_metric_keys() -> list[str]:
    """The first column of the table of metrics keys on the docs' outputs page."""
    text = (REPO / "docs" / "reference" / "outputs.md").read_text(encoding="utf-8")
    section = text.split("## Keys of metrics.json", 1)[1]
    table = section[section.index("| key |"):].split("\n\n", 1)[0]
    return [row.split("|")[1].strip().strip("`") for row in table.splitlines()[2:]]


def test_the_outputs_page_documents_every_metric_key_and_no_other():
    assert sorted(_documented_metric_keys()) == sorted(metric_keys.DOCUMENTED)


def test_no_module_outside_the_head_kinds_branches_on_a_kind_name():
    # what a kind does is asked of its HeadKind (pipeline.heads.registry), never tested by name
    from pipeline.config.heads import HEAD_KINDS
    allowed = {REPO / "pipeline" / "config" / "heads.py"}
    names = "|".join(HEAD_KINDS)
    pattern = re.compile(rf"""kind\b.*(==|!=|\bin\b).*["']({names})["']""")
    offenders = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
                 for path in sorted((REPO / "pipeline").rglob("*.py")) if path not in allowed
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if pattern.search(line)]
    assert offenders == []
