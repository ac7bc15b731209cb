"""Child processes that do not outlive the process that started them, even when it is SIGKILLed."""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

#: libc's ``prctl`` (Linux), resolved once at import: the child calls it between fork and exec.
_PRCTL = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
PR_SET_PDEATHSIG = 1


def die_with_parent(sig: signal.Signals = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets ``sig`` when this process dies.

    It runs in the forked child before exec: PR_SET_PDEATHSIG asks the kernel for ``sig`` when the
    parent dies (strictly: the parent *thread* that forked, so spawn from a thread that lives as
    long as the process), and the setting survives exec, so the program's own pid carries it. A
    parent killed between fork and prctl would never send that signal, so the child then checks that
    its parent is still the one that forked it and exits if not: there is no window.

    Only pre-resolved calls happen in the child (no imports, no locks, no logging), which is what
    makes a ``preexec_fn`` safe in a process with threads. Setting ``util-linux setpriv
    --pdeathsig`` in front of the command instead is not equivalent: it sets the signal only once it
    runs, after ``Popen`` has returned, and a parent killed in between leaves the child behind.
    """
    parent = os.getpid()
    signum = int(sig)

    def preexec() -> None:
        if _PRCTL is not None and _PRCTL(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
            os._exit(127)
        if os.getppid() != parent:
            os._exit(128 + signum)

    return preexec
