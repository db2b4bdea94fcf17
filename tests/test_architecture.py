"""The shape of the house (ARCHITECTURE.md), read from the source with ``ast``: data flows one way,
conf -> launchers -> proxy_exp jobs -> MLflow -> analysis, and nothing imports "up" that arrow."""
import ast
import glob
import os

import pytest

from tests.helpers import REPO

# package -> the project packages it must never import
FORBIDDEN = {"proxy_exp": {"launchers", "analysis", "tests", "benchmarks"},
             "analysis": {"launchers", "tests", "benchmarks"},
             "launchers": {"tests", "benchmarks"}}
# the only test modules other tests may import: the shared helpers and fixture modules
SHARED_TEST_MODULES = {"tests.helpers", "tests.integration.conftest", "tests.proxy_exp.data.conftest"}


def _sources(package: str) -> list[str]:
    return sorted(glob.glob(os.path.join(REPO, package, "**", "*.py"), recursive=True))


def _imports(path: str) -> set[str]:
    """Every module an ``import`` or ``from ... import`` names in the file (also inside functions), absolute."""
    tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_imports_up(package):
    files = _sources(package)
    assert files, f"no sources under {package}/"
    bad = [f"{os.path.relpath(p, REPO)} imports {m}" for p in files for m in sorted(_imports(p))
           if m.split(".")[0] in FORBIDDEN[package]]
    assert not bad, "imports against the data flow:\n" + "\n".join(bad)


def test_only_the_tracking_package_talks_to_mlflow():
    bad = [os.path.relpath(p, REPO) for pkg in ("proxy_exp", "launchers", "analysis") for p in _sources(pkg)
           if any(m.split(".")[0] == "mlflow" for m in _imports(p))
           and not os.path.relpath(p, REPO).startswith(os.path.join("proxy_exp", "tracking"))]
    assert not bad, f"these modules import mlflow instead of going through proxy_exp.tracking: {bad}"


def test_tests_do_not_import_each_other():
    bad = [f"{os.path.relpath(p, REPO)} imports {m}" for p in _sources("tests") for m in sorted(_imports(p))
           if m.startswith("tests.") and m not in SHARED_TEST_MODULES]
    assert not bad, "tests import other test modules (move what they share to tests/helpers.py):\n" + "\n".join(bad)


def test_tests_mirror_the_library():
    """Every library package has its test folder (tests/<package path>/)."""
    for pkg in ("proxy_exp", "proxy_exp/data", "proxy_exp/score", "proxy_exp/train", "proxy_exp/evaluate",
                "proxy_exp/tracking", "launchers", "analysis"):
        assert glob.glob(os.path.join(REPO, "tests", pkg, "test_*.py")), f"tests/{pkg}/ holds no tests"


def test_the_checker_sees_an_upward_import(tmp_path):
    """The check itself can fail: a module that imports launchers from proxy_exp is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from launchers.plan import plan_campaign\n    import analysis.runs\n")
    assert {"launchers.plan", "analysis.runs"} <= _imports(str(bad))
