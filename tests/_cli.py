"""Calling the ``edge-sdk`` command in-process from tests: the ``cli`` fixture (conftest.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_sdk.cli import main


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


CLI = Callable[..., Result]


def in_process(capsys: pytest.CaptureFixture[str]) -> CLI:
    """Call ``main`` in-process; argparse's SystemExit becomes the exit code."""

    def call(*argv: str | Path) -> Result:
        capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return call
