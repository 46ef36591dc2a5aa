"""The package's shape: no import cycles, hidden or not (imports inside functions count)."""

import ast
from pathlib import Path

import emi

PACKAGE = Path(emi.__file__).parent


def import_graph() -> dict[str, set[str]]:
    mods = {}
    for f in PACKAGE.rglob("*.py"):
        parts = ("emi", *f.relative_to(PACKAGE).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = f

    def owner(name: str) -> str:
        while name not in mods and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    graph = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("emi"):
                names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                         for a in node.names]
            graph[m] |= {owner(n) for n in names if n.startswith("emi")} - {m, "emi"}
    return graph


def test_no_import_cycles():
    graph = import_graph()
    cycles = []

    def visit(node, path):
        for nxt in graph.get(node, ()):
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif len(path) < 40:
                visit(nxt, path + [nxt])

    for start in graph:
        visit(start, [start])
        if cycles:
            break
    assert not cycles, " -> ".join(cycles[0])


def test_the_organism_depends_on_the_core_never_the_reverse():
    graph = import_graph()
    core = [m for m in graph if not m.startswith("emi.organism")]
    assert not [(m, d) for m in core for d in graph[m] if d.startswith("emi.organism")]


def test_interventions_take_a_vector_interface_never_the_directions_stage():
    """emi.interventions depends on emi.interventions.vector's protocol, not emi.directions (which uses it)."""
    graph = import_graph()
    assert not [(m, d) for m in graph if m.startswith("emi.interventions") for d in graph[m]
                if d.startswith("emi.directions")]


def test_python_m_emi_command_is_python_m_emi_dot_command(capsys, tmp_path):
    from emi import cli
    from emi.__main__ import VERBS, main

    assert cli.run(main, ["extract", "--store", str(tmp_path / "none")]) == 2
    assert "no activation store" in capsys.readouterr().err
    assert set(VERBS) >= {"steer", "evaluate", "cache", "extract", "sae", "figures"}


STAGES = {"core", "models", "behaviour", "judging", "activations", "engines", "directions", "interventions",
          "experiments", "report", "organism", "training", "diffing"}
COMMANDS = {"view", "steer", "evaluate", "cache", "extract", "sae", "figures", "trajectory", "export", "rejudge", "finetune",
            "screen", "defences", "diff"}


def test_the_package_root_holds_the_commands_and_the_folders_the_stages():
    """One file per command, named as the user types it; every other module in a stage's folder."""
    from emi.__main__ import VERBS

    top = {f.stem for f in PACKAGE.glob("*.py")} - {"__init__", "__main__", "cli"}
    assert top == COMMANDS
    assert {v for k, v in VERBS.items() if k != "train-organism"} == {f"emi.{c}" for c in COMMANDS}
    folders = {d.name for d in PACKAGE.iterdir() if d.is_dir() and (d / "__init__.py").exists()}
    assert folders == STAGES
    for stage in folders:  # each folder says what it owns
        assert ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text()))


def test_commands_are_short_and_the_library_never_imports_them():
    long = []
    for c in COMMANDS | {"__main__", "cli"}:
        tree = ast.parse((PACKAGE / f"{c}.py").read_text())
        long += [f"emi.{c}.{n.name}: {n.end_lineno - n.lineno + 1} lines" for n in ast.walk(tree)
                 if isinstance(n, ast.FunctionDef) and n.end_lineno - n.lineno + 1 > 60]
    assert not long
    graph = import_graph()
    commands = {f"emi.{c}" for c in COMMANDS} | {"emi.cli", "emi.__main__"}
    library = [m for m in graph if m not in commands and not m.startswith("emi.organism")]
    assert not [(m, d) for m in library for d in graph[m] if d in commands]


def test_scripts_outside_the_package_import_what_exists():
    """bench/, docs/experiments/ and the notebooks' sources name emi modules that exist (they are not
    run by the suite, so a moved module would otherwise break them silently)."""
    import importlib
    import importlib.util

    root = PACKAGE.parent
    files = [*root.glob("bench/*.py"), *root.glob("docs/experiments/*.py"), root / "notebooks" / "_build.py"]
    missing = []
    for f in files:
        trees = [ast.parse(f.read_text())]
        for n in ast.walk(trees[0]):  # the notebooks' cells are strings
            if isinstance(n, ast.Constant) and isinstance(n.value, str):
                trees += [ast.parse(x.strip()) for x in n.value.splitlines() if x.strip().startswith("from emi")]
        for tree in trees:
            for n in ast.walk(tree):
                if isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] == "emi":
                    mod = importlib.import_module(n.module)
                    missing += [f"{f.name}: {n.module}.{a.name}" for a in n.names if not hasattr(mod, a.name)
                                and importlib.util.find_spec(f"{n.module}.{a.name}") is None]
    assert len(files) > 8 and not missing
