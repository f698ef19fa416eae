"""The package's layout rules, read from the source (issue 12): a subpackage's private modules are
its own, other packages use its public names, and no import cycle joins packages or modules."""

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "bestroute"


def _imports(path: Path, root: Path = SOURCE) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path`` (a file below the package directory
    ``root``), those inside functions included."""
    package = ".".join(("bestroute", *path.relative_to(root).parts[:-1]))  # what a level-1 import is relative to
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            name = ".".join(part for part in (base, node.module) if part)
            found.append((node.lineno, name))
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in found if name.startswith("bestroute")]


def test_no_module_imports_another_packages_private_module():
    violations = []
    for path in sorted(SOURCE.rglob("*.py")):
        own = ".".join(("bestroute", *path.relative_to(SOURCE).parts[:-1]))
        for line, name in _imports(path):
            parts = name.split(".")
            private = [i for i, part in enumerate(parts) if part.startswith("_") and i > 1]
            # bestroute._exceptions and friends are the root package's, shared by every subpackage.
            if private and not own.startswith(".".join(parts[: private[0]])):
                violations.append(f"{path.relative_to(SOURCE)}:{line} imports {name}")
    assert not violations, "\n".join(violations)


def test_the_rule_sees_a_violation(tmp_path):
    """The check above can fail: it reads relative imports the way Python resolves them."""
    (tmp_path / "collection").mkdir()
    (tmp_path / "collection" / "_x.py").write_text("\n\nfrom ..serving._config import X\nfrom ._scorers import Y\n")
    found = _imports(tmp_path / "collection" / "_x.py", tmp_path)
    assert (3, "bestroute.serving._config") in found and (4, "bestroute.collection._scorers.Y") in found


def _module_of(name: str, root: Path) -> str:
    """The module an imported name lives in: its longest prefix that is a file or package below ``root``."""
    parts = name.split(".")
    for end in range(len(parts), 1, -1):
        path = root.joinpath(*parts[1:end])
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
            return ".".join(parts[:end])
    return "bestroute"


def _dependencies(root: Path, depth: int | None) -> dict[str, set[str]]:
    """What each module (``depth`` None) or each top-level package and module (``depth`` 2, e.g.
    ``bestroute.routers``) imports, imports inside functions included: a cycle hidden behind a
    lazy import is still a cycle."""

    def node(module: str) -> str:
        return module if depth is None else ".".join(module.split(".")[:depth])

    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        module = ".".join(("bestroute", *(parts[:-1] if parts[-1] == "__init__" else parts)))
        targets = {node(_module_of(name, root)) for _, name in _imports(path, root)}
        graph.setdefault(node(module), set()).update(targets - {node(module)})
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return None


# The architecture, bottom up: a package may import only packages of lower layers. The
# applications (one layer) do not import each other; the demo loop and the command line combine
# them. The root package's private modules (_exceptions, _text, _section, _artifact) are below all.
LAYERS = (
    ("bestroute._exceptions",),
    ("bestroute._text", "bestroute._section", "bestroute._artifact", "bestroute._json"),
    ("bestroute.data",),
    ("bestroute.backends",),
    ("bestroute.features",),
    ("bestroute.selection",),
    ("bestroute.strategies", "bestroute.reward"),
    ("bestroute.policy",),
    ("bestroute.routers",),
    ("bestroute.evaluation", "bestroute.collection", "bestroute.local", "bestroute.replay", "bestroute.serving"),
    ("bestroute.demo", "bestroute.batch"),
    ("bestroute.cli", "bestroute"),
    ("bestroute.__main__",),
)


def _layer_violations(graph: dict[str, set[str]]) -> list[str]:
    layer = {name: depth for depth, names in enumerate(LAYERS) for name in names}
    unplaced = sorted(set(graph) - set(layer))
    violations = [f"{name} is in no layer of LAYERS" for name in unplaced]
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            if source in layer and target in layer and layer[target] >= layer[source]:
                violations.append(f"{source} imports {target} (layer {layer[target]} >= {layer[source]})")
    return violations


def test_imports_only_go_down_the_layers():
    assert not _layer_violations(_dependencies(SOURCE, 2))


def test_the_layer_rule_sees_an_import_that_goes_up_or_across(tmp_path):
    for package in ("collection", "serving", "selection", "routers"):
        (tmp_path / package).mkdir()
    (tmp_path / "collection" / "__init__.py").write_text("from ..serving import GatewayConfig\n")
    (tmp_path / "serving" / "__init__.py").write_text("")
    (tmp_path / "routers" / "__init__.py").write_text("")
    (tmp_path / "selection" / "__init__.py").write_text("def f():\n    from ..routers import Router\n")
    assert _layer_violations(_dependencies(tmp_path, 2)) == [
        "bestroute.collection imports bestroute.serving (layer 9 >= 9)",
        "bestroute.selection imports bestroute.routers (layer 8 >= 5)",
    ]


def _third_party(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_selection_layer_does_no_io():
    """Selection runs options on samples it is given: no HTTP client, server or database in it."""
    io = {"aiohttp", "httpx", "fastapi", "starlette", "uvicorn", "sqlalchemy", "socket", "requests"}
    found = {str(p.relative_to(SOURCE)): _third_party(p) & io for p in (SOURCE / "selection").rglob("*.py")}
    assert not {path: names for path, names in found.items() if names}


def test_import_bestroute_stays_lean():
    """``import bestroute`` loads no plotting, HTTP-client or database library (they are loaded
    by what uses them)."""
    code = "import sys, bestroute; print(sorted(m for m in ('matplotlib', 'aiohttp', 'sqlalchemy', 'fastapi') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


@pytest.mark.parametrize("depth", [2, None], ids=["packages", "modules"])
def test_no_import_cycle(depth):
    """Packages form layers (data -> features -> selection -> reward -> routers -> ... -> serving)
    and so do the modules inside each."""
    assert _cycle(_dependencies(SOURCE, depth)) is None


def test_the_cycle_check_sees_a_lazy_cycle(tmp_path):
    (tmp_path / "reward").mkdir()
    (tmp_path / "routers").mkdir()
    (tmp_path / "reward" / "__init__.py").write_text("from ..routers import pick\n")
    (tmp_path / "routers" / "__init__.py").write_text("def f():\n    from ..reward import RewardModel\n")
    graph = _dependencies(tmp_path, 2)
    assert graph == {"bestroute.reward": {"bestroute.routers"}, "bestroute.routers": {"bestroute.reward"}}
    assert set(_cycle(graph) or ()) == {"bestroute.reward", "bestroute.routers"}


def test_every_public_error_derives_from_bestroute_error():
    """One exception tree: whatever the package raises on purpose is a BestRouteError."""
    import importlib
    import inspect

    from bestroute import BestRouteError

    outside = []
    for path in sorted(SOURCE.rglob("*.py")):
        parts = path.relative_to(SOURCE).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        module = importlib.import_module(".".join(("bestroute", *(parts[:-1] if parts[-1] == "__init__" else parts))))
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
                and not name.startswith("_")
                and not issubclass(value, BestRouteError)
            ):
                outside.append(f"{module.__name__}.{name}")
    assert not outside
