"""llama.cpp's own log, without a Python callback.

A Python function handed to C as llama.cpp's log callback is called from whatever thread logs,
CUDA's and ggml's own included; on a CUDA build that crashed the model load with a SIGSEGV and
no trace. Importing ``llama_cpp`` installs such a callback (its ``_logger`` module), so the
engine resets llama.cpp to its C default, which writes to file descriptor 2, and quiets a load
by pointing descriptor 2 at a temporary file for its duration instead. What llama.cpp wrote is
then logged at debug level, or, when the load fails, put into the error.

``vllm-service serve`` gives Python its own copy of stderr (cli.py), so that Python's log lines
and ``faulthandler``'s crash reports never go into that file.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import llama_cpp

logger = logging.getLogger(__name__)

#: Descriptor 2 is process-wide: one capture at a time (model loads are serialized by it).
_capture_lock = threading.Lock()
#: Most of llama.cpp's output kept from one capture (its tail, where errors are).
MAX_CAPTURED_BYTES = 64 * 1024


def use_default_log() -> None:
    """Route llama.cpp's log to its C default (stderr): no Python code runs when C logs."""
    # A NULL function pointer: llama.cpp's own default, which writes to stderr.
    llama_cpp.llama_log_set(llama_cpp.llama_log_callback(), ctypes.c_void_p(0))


def log_callback_address() -> int:
    """The address of the function llama.cpp calls when it logs."""
    callback = llama_cpp.llama_log_callback()
    user_data = ctypes.c_void_p()
    llama_cpp.llama_log_get(ctypes.byref(callback), ctypes.byref(user_data))
    return ctypes.cast(callback, ctypes.c_void_p).value or 0


@dataclass
class NativeOutput:
    """What native code wrote to descriptor 2 during a capture."""

    text: str = ""

    def errors(self, lines: int = 8) -> str:
        """The last lines that report an error or a failure (llama.cpp's reasons)."""
        found = [
            line.strip()
            for line in self.text.splitlines()
            if "error" in line.lower() or "fail" in line.lower()
        ]
        return "; ".join(found[-lines:])


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[NativeOutput]:
    """Point descriptor 2 at a temporary file while the block runs; its text is in the
    yielded object afterwards (and logged at debug level)."""
    output = NativeOutput()
    with _capture_lock, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield output
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            size = sink.seek(0, os.SEEK_END)
            sink.seek(max(0, size - MAX_CAPTURED_BYTES))
            output.text = sink.read().decode("utf-8", errors="replace")
            if output.text and logger.isEnabledFor(logging.DEBUG):
                logger.debug("llama.cpp:\n%s", output.text.rstrip())
