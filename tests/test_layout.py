"""The package's layout rules, read from the source (issue 12): a subpackage's private modules are
its own; other packages use its public names."""

import ast
from pathlib import Path

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
