"""Numba kernels for the hot operations around a model.

One module per family (``image``, ``color``, ``quant``, ``activations``, ``detect``). Each
public function validates its arguments and allocates its output, then calls a ``_``-prefixed
kernel that loops and writes into ``out``; a plain NumPy ``*_reference`` beside each kernel is
what the tests compare against. Compilation happens on first use (or in ``edge-sdk warmup``),
never at import; see ``edge_sdk.kernels._jit`` for the options and why.
"""

from __future__ import annotations

from edge_sdk.kernels._jit import JitSettings, configure, jit_available, settings

__all__ = ["JitSettings", "configure", "jit_available", "settings"]
