"""fnapi stays headless, and the CLI starts without importing the heavy libraries."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import fnapi

TUI_MODULES = ("textual", "questionary", "fntui")
HEAVY_MODULES = ("torch", "transformers", "datasets", "sklearn", "peft")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sys.modules))"],
        capture_output=True, text=True, check=True,
    )
    return set(out.stdout.split())


def _all_fnapi_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(fnapi.__path__, "fnapi.") if m.name != "fnapi.__main__")


def test_no_fnapi_module_imports_the_tui():
    imports = "\n".join(f"import {name}" for name in _all_fnapi_modules())
    loaded = _modules_after(imports)
    assert not [m for m in loaded if m.split(".")[0] in TUI_MODULES]


def test_cli_start_up_imports_no_heavy_library():
    loaded = _modules_after("import fnapi, fnapi.cli")
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY_MODULES)
    assert heavy == []


def test_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "fnapi", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "validate" in out.stdout
