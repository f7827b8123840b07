"""Quiet by default: third-party warnings, progress bars and import notices stay off the user's terminal.

``import leaninfer`` applies it, so the Python API is as quiet as the CLI: a notebook user reads library
chatter (pytree deprecations, export tracer warnings, ONNX Runtime's "consider pre-processing", weight
loading bars, torchao's optional-kernel notices, NNCF's bars) as something broken. ``LEANINFER_LOG=debug``
(or the CLI's ``--verbose``) leaves every library as it is. Errors always surface: exceptions are never
touched, and third-party loggers keep ERROR.

Each library is quieted with its own switch, and only once it is imported (``import leaninfer`` loads none
of them): wrapt's post-import hooks run the switch right after the library's own import, which matters for
the libraries that reset their logger level while importing (torch, transformers, nncf). wrapt is the
maintained implementation of PEP 369-style hooks (already installed with ``limits``), so there is no home-made
``sys.meta_path`` finder here. Nothing redirects a file descriptor.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings

import wrapt

ENV = "LEANINFER_LOG"
LEVELS = ("warning", "info", "debug")  # leaninfer's own level; `debug` also lets the libraries speak

# Warnings attributed to these modules are library internals a user cannot act on (TracerWarning from
# transformers' masking code, torch.onnx's opset notes, deprecations between the libraries themselves).
_NOISY_MODULES = (r"(torch|torchao|torchvision|transformers|accelerate|huggingface_hub|safetensors|onnx|onnxruntime"
                  r"|onnxscript|onnx_ir|openvino|nncf|optimum|bitsandbytes|sentence_transformers)(\.|$)")
# A library's deprecation of its own API, raised with a stacklevel that points into our code, is ours to fix.
_OWN_MODULES = r"leaninfer(\.|$)"
_NOISY_PATH = re.compile(r"[\\/](onnxruntime|nncf|openvino|torchao|torch|transformers)[\\/]")

# loggers kept at ERROR while quiet, and their level otherwise. Set before the library loads (torchao logs its
# optional-kernel notices while importing) and again right after (torch and nncf set their level on import).
_LOGGERS = {"torch": logging.WARNING, "torchao": logging.NOTSET, "nncf": logging.INFO, "openvino": logging.NOTSET,
            "accelerate": logging.NOTSET, "bitsandbytes": logging.NOTSET, "sentence_transformers": logging.NOTSET}

_state = {"quiet": None}


def _set_loggers(quiet: bool) -> None:
    for name, loud in _LOGGERS.items():
        logging.getLogger(name).setLevel(logging.ERROR if quiet else loud)


def _hf_transformers(m, quiet: bool) -> None:
    (m.set_verbosity_error if quiet else m.set_verbosity_warning)()
    (m.disable_progress_bar if quiet else m.enable_progress_bar)()  # "Loading weights" bars


def _hf_hub(m, quiet: bool) -> None:
    (m.disable_progress_bars if quiet else m.enable_progress_bars)()


def _onnxruntime(m, quiet: bool) -> None:
    m.set_default_logger_severity(3 if quiet else 2)  # C++ log: 3 = ERROR, 2 = WARNING (its default)


def _nncf(m, quiet: bool) -> None:
    m.set_log_level(logging.ERROR if quiet else logging.INFO)
    _set_loggers(quiet)


def _nncf_bars(m, quiet: bool) -> None:
    # nncf 3.4 has no switch for its rich progress bars ("Statistics collection", "Applying Smooth Quant"...):
    # they draw on rich's global console (stdout). Its own `disable` argument is set at each bar instead, via
    # wrapt's patcher, read at call time so --verbose brings them back. Patched once per process.
    if not getattr(m.track.__init__, "_leaninfer_quiet", False):
        wrapt.wrap_function_wrapper(m, "track.__init__", _bar_off)
        m.track.__init__._leaninfer_quiet = True


def _bar_off(wrapped, instance, args, kwargs):
    if _state["quiet"]:
        kwargs["disable"] = True
    return wrapped(*args, **kwargs)


def _torch(m, quiet: bool) -> None:
    _set_loggers(quiet)  # torch._logging resets the `torch` logger's level while torch imports


# module name -> its switch; each runs when that module is imported (at once if it already is).
_SWITCHES = {"torch": _torch, "transformers.utils.logging": _hf_transformers, "huggingface_hub.utils": _hf_hub,
             "onnxruntime": _onnxruntime, "nncf": _nncf, "nncf.common.logging.track_progress": _nncf_bars}


def _on_import(name: str):
    def hook(module) -> None:
        try:
            _SWITCHES[name](module, bool(_state["quiet"]))
        except Exception:  # a library that renamed its switch: chatter is not worth failing an import for
            logging.getLogger("leaninfer").debug("could not set the output switch of %s", name, exc_info=True)

    return hook


class _LibraryRootRecords(logging.Filter):
    """Drops below-ERROR records that a library logs on the *root* logger (``logging.warning(...)`` in
    onnxruntime.quantization: "Please consider to run pre-processing..."); a user's own root records pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not _NOISY_PATH.search(record.pathname or "")


_ROOT_FILTER = _LibraryRootRecords()


def level() -> str:
    """LEANINFER_LOG, checked: one of :data:`LEVELS` (default ``warning``)."""
    value = os.environ.get(ENV, "").strip().lower() or "warning"
    if value not in LEVELS:
        warnings.warn(f"{ENV}={os.environ[ENV]!r} is not a log level; valid: {', '.join(LEVELS)}; using 'warning'",
                      stacklevel=2)
        return "warning"
    return value


def configure() -> None:
    """Apply LEANINFER_LOG: libraries quiet unless it is ``debug``. Idempotent; called by ``import leaninfer``
    and again by the CLI after ``--verbose``, so it also undoes itself."""
    quiet = level() != "debug"
    first = _state["quiet"] is None
    if _state["quiet"] == quiet:
        return
    _state["quiet"] = quiet
    # Filters go to the front of the list, so the newest one wins: `default` re-shows what `ignore` hid.
    action = "ignore" if quiet else "default"
    warnings.filterwarnings(action, module=_NOISY_MODULES)
    warnings.filterwarnings(action, category=DeprecationWarning, module=_OWN_MODULES)
    warnings.filterwarnings(action, category=FutureWarning, module=_OWN_MODULES)
    root = logging.getLogger()
    (root.addFilter if quiet else root.removeFilter)(_ROOT_FILTER)
    _set_loggers(quiet)
    for name in _SWITCHES:
        if first:
            wrapt.register_post_import_hook(_on_import(name), name)
        elif name in sys.modules:  # un-quieting (--verbose) a library that is already loaded
            _on_import(name)(sys.modules[name])


def quiet_libraries() -> None:
    """For a leaninfer process (the CLI, every benchmark child): :func:`configure`, and our own log records
    on stderr at LEANINFER_LOG's level. Step notes also land in the manifest, so nothing a user needs is hidden."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    configure()
    lvl = level()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("leaninfer").setLevel(lvl.upper())
