"""Two small registries that replace if/elif chains on the backend.

* ``FORMAT_LOADERS``: an artifact's manifest ``format`` (``hf``, ``torch-state``, ``onnx``, ``openvino``) ->
  the function that loads that folder. Each backend module registers its own formats.
* ``HANDLE_KINDS``: what ``Model.derive`` is given (a torch ``module``, or a runtime graph file by suffix) ->
  the handle class that wraps it.
"""

from __future__ import annotations

from collections.abc import Callable

FORMAT_LOADERS: dict[str, Callable] = {}  # (folder, manifest, device) -> Model
HANDLE_KINDS: dict[str, Callable] = {}  # "module" | ".onnx" | ".xml" -> (thing, **handle fields) -> Model


def register_format(name: str):
    def deco(fn):
        FORMAT_LOADERS[name] = fn
        return fn

    return deco


def register_handle(kind: str):
    def deco(cls):
        HANDLE_KINDS[kind] = cls
        return cls

    return deco
