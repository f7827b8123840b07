"""Keep library chatter off the user's terminal: progress bars, tracer warnings, optional-kernel notices."""

from __future__ import annotations

import logging
import os
import warnings


def quiet_libraries() -> None:
    """Used by the CLI and by every benchmark child process. Our own warnings go through ``leaninfer``'s
    logger, and step notes land in the manifest, so nothing a user needs is silenced."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Export-time TracerWarnings and deprecation notices from the libraries are not actionable for a user.
    warnings.filterwarnings("ignore", module=r"(torch|transformers|onnxruntime|nncf)\b")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("torchao", "nncf", "torch", "torch.utils._pytree", "transformers", "onnxruntime", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # transformers missing or changed: chatter is not worth failing for
        pass
