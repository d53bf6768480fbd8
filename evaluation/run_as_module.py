"""Run an evaluation program that was started as a file as the module it is.

``python evaluation/compute_metrics_blind.py`` (or ``cd evaluation && python compute_metrics_blind.py``,
the reference's way) puts the program's own folder, not the repository, first on Python's import path,
so the project's packages (``evaluation``, ``utils``, ...) cannot be imported from there. Instead of
editing ``sys.path``, such a program calls `run_as_module(__file__)` before importing anything of the
project: it runs ``python -m evaluation.<program> <the same arguments>`` with the repository root on
``PYTHONPATH`` and ends with that run's exit status. The working folder is unchanged, so relative
paths mean what they meant. On POSIX the process is replaced (same process, signals and exit code);
elsewhere the module runs as a child process that this one waits for.

A program finds this module because its own folder is first on the path of a script, which is also
why the child leaves the working folder off its path (``-P``, Python 3.11+): the evaluation folder's
module names (``cli``, ``inputs``, ``weights``, ...) must not shadow other packages.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_as_module(script: str) -> None:
    """Hand over to ``python -m evaluation.<name of script>`` (never returns)."""
    root = Path(script).resolve().parents[1]
    paths = [str(root), *filter(None, [os.environ.get("PYTHONPATH")])]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []
    command = [sys.executable, *safe_path, "-m", f"evaluation.{Path(script).stem}", *sys.argv[1:]]
    if os.name == "posix":
        os.execve(sys.executable, command, environment)
    try:
        completed = subprocess.run(command, env=environment)
    except KeyboardInterrupt:  # the child got the interrupt too and ends on its own
        raise SystemExit(130) from None
    raise SystemExit(completed.returncode)
