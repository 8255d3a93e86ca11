"""firmware_tools stands alone on pyserial: it never imports edge_sdk (DESIGN.md, "Modules
and who owns what"; STYLE.md "firmware_tools stands alone": a technician's laptop may have
only pyserial). Checked two ways: importing every firmware_tools module in a fresh
interpreter leaves no edge_sdk module loaded, and no source file names edge_sdk in an import.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import firmware_tools

PACKAGE = Path(firmware_tools.__file__).parent


def _modules() -> list[str]:
    return sorted(f"firmware_tools.{info.name}" for info in pkgutil.iter_modules([str(PACKAGE)]))


def test_the_package_has_modules_to_check() -> None:
    assert {"firmware_tools.xmodem", "firmware_tools.ymodem", "firmware_tools.errors"} <= set(
        _modules()
    )


def test_importing_firmware_tools_loads_no_edge_sdk() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for name in {['firmware_tools', *_modules()]!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'edge_sdk')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PACKAGE.parent,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == []


def test_no_source_file_imports_edge_sdk() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute | ast.Name)
                and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                names = [str(node.args[0].value)]
            else:
                continue
            for name in names:
                if name.split(".")[0] == "edge_sdk":
                    offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {name}")
    assert offenders == []
