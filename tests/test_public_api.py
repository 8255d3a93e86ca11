"""The curated public namespace: __all__, the lazy export table and the modules agree."""

from __future__ import annotations

import importlib

import edge_sdk
from edge_sdk import errors


def test_all_is_sorted_and_matches_the_export_table() -> None:
    assert edge_sdk.__all__ == sorted(edge_sdk.__all__)
    assert set(edge_sdk.__all__) == set(edge_sdk._EXPORTS) | {"__version__"}


def test_every_export_resolves_to_its_module() -> None:
    for name, module in edge_sdk._EXPORTS.items():
        value = getattr(edge_sdk, name)
        assert getattr(importlib.import_module(module), name) is value


def test_every_error_is_exported_and_rooted() -> None:
    for name in errors.__all__:
        error = getattr(errors, name)
        assert issubclass(error, errors.EdgeSDKError)
        assert getattr(edge_sdk, name) is error


def test_every_error_is_drawn_in_the_tree() -> None:
    assert errors.__doc__ is not None
    for name in errors.__all__:
        assert name in errors.__doc__, f"{name} missing from the tree in errors.py"


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        edge_sdk.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
