"""Keep the process's floating-point environment intact around native plugin code.

Loading a DPF plugin (every Zam plugin, VST2 or VST3, and the Dragonfly reverbs)
switches the calling thread's SSE control register to flush denormals to zero
(FTZ/DAZ) and leaves it so: afterwards ``1e-310 * 1.0 == 0.0`` in Python, and the
Faust compiler inside dawdreamer aborts the whole interpreter on an assertion in
its interval analysis (``intervalPow.cpp: x.lo() > 0``) when it compiles any DSP
with ``pow``. Processing did not change the register in the same measurements.

:func:`float_env_guard` saves the environment (``fegetenv``, which on x86-64
glibc includes MXCSR) and restores it on exit; plugin loading and Faust
compilation in :mod:`deepafx.hosts.vst3` and :mod:`deepafx.hosts.dawdreamer_host`
run inside it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from contextlib import contextmanager
from typing import Iterator

_FENV_BYTES = 64  # glibc x86-64 fenv_t is 32 bytes; room to spare
_FE_DFL_ENV = ctypes.c_void_p(-1)  # glibc's FE_DFL_ENV: ((const fenv_t *) -1)

try:
    _libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
    _libm.fegetenv.argtypes = [ctypes.c_void_p]
    _libm.fesetenv.argtypes = [ctypes.c_void_p]
except (OSError, AttributeError):  # no C math library exposing fenv: nothing to guard
    _libm = None


def denormals_flushed() -> bool:
    """True when this thread currently flushes denormal floats to zero."""
    return float("1e-310") * 1.0 == 0.0


@contextmanager
def float_env_guard(clean: bool = False) -> Iterator[None]:
    """Restore this thread's floating-point environment when the block exits.

    Args:
        clean: Also switch to the default environment (denormals kept, round to
            nearest) for the duration of the block (used while compiling Faust).
    """
    if _libm is None:
        yield
        return
    saved = ctypes.create_string_buffer(_FENV_BYTES)
    _libm.fegetenv(saved)
    if clean:
        _libm.fesetenv(_FE_DFL_ENV)
    try:
        yield
    finally:
        _libm.fesetenv(saved)


__all__ = ["denormals_flushed", "float_env_guard"]
