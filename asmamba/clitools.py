"""What every ``asmamba`` command shares: ``key=value`` overrides, one-line errors, clean stops, log lines that keep
clear of progress bars. Nothing here imports torch.

Conventions (the README's "Command line" section):

- **Overrides** are OmegaConf dotlist items given as positional ``key=value`` arguments (``coarse.threshold=0.3``,
  ``quantization.dense.cell_size=4``), the spelling hydra-style tools use. The older ``--set key=value`` still works
  and prints a one-line note.
- **Errors** on bad input are one line, ``asmamba CMD: error: <what, naming the file or key>``, exit code 2
  (``ASMAMBA_TRACEBACK=1`` shows the Python traceback instead).
- **Ctrl-C / SIGTERM** stop with one line (saying how to resume where that applies), exit code 130 / 143.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

#: a dotlist item: a key made of names, dots and list indices, then ``=``
_OVERRIDE = re.compile(r"^[A-Za-z_][\w\-]*(\.[\w\-]+|\[\d+\])*=")

OVERRIDE_HELP = "config overrides, OmegaConf dotlist: key=value (e.g. {example})"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (``PROG: error: ... (see 'PROG --help')``, exit code 2) instead of the usage
    block and the error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        """Options and positionals in any order: ``asmamba train PRESET --resume key=value`` takes the override
        after the flag as well (plain argparse stops the positionals at the first option). Parsers with
        sub-commands or a remainder keep argparse's order rule (intermixed parsing cannot split those)."""
        if any(action.nargs in (argparse.PARSER, argparse.REMAINDER) for action in self._actions):
            return super().parse_args(args, namespace)
        return self.parse_intermixed_args(args, namespace)


def summary(doc: str) -> str:
    """A module docstring's first paragraph as a command's ``--help`` description (without reST quotes)."""
    return doc.split("\n\n")[0].replace("``", "'")


def is_override(token: str) -> bool:
    """Whether a command-line token is a ``key=value`` override rather than a path (an existing file wins)."""
    return bool(_OVERRIDE.match(token)) and not Path(token).exists()


def add_overrides(parser: argparse.ArgumentParser, example: str, positional: bool = True) -> None:
    """Positional ``key=value ...`` (unless ``positional=False``, for commands whose positionals take any number of
    paths: split those with :func:`split_overrides`) and the deprecated ``--set``, hidden from the help."""
    if positional:
        parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", default=[],
                            help=OVERRIDE_HELP.format(example=example))
    parser.add_argument("--set", nargs="*", default=[], dest="deprecated_set", metavar="KEY=VALUE",
                        help=argparse.SUPPRESS)


def gather_overrides(args: argparse.Namespace, prog: str, extra: Sequence[str] = ()) -> list[str]:
    """The overrides of a parsed command line (positional, then the deprecated ``--set`` ones, then ``extra``).

    Raises:
        ValueError: an item is not of the form ``key=value``.
    """
    old = list(getattr(args, "deprecated_set", None) or [])
    if old:
        print(f"{prog}: note: --set is deprecated; give overrides as positional key=value arguments "
              f"(e.g. {' '.join(old)})", file=sys.stderr)
    items = list(getattr(args, "overrides", None) or []) + old + list(extra)
    for item in items:
        if not _OVERRIDE.match(item):
            raise ValueError(f"{item!r} is neither a known argument nor a key=value override")
    return items


def split_overrides(tokens: Sequence[str]) -> tuple[list[str], list[str]]:
    """Positional tokens -> (paths, ``key=value`` overrides)."""
    paths = [t for t in tokens if not is_override(t)]
    return paths, [t for t in tokens if is_override(t)]


def one_line(err: BaseException) -> str:
    """An exception's message on one line (some libraries' messages span several)."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (a file, a key, a value) rather than a bug: reported in one line."""
    from omegaconf.errors import OmegaConfBaseException

    return (ValueError, OSError, ImportError, OmegaConfBaseException)


class Stopped(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM (Ctrl-C raises :class:`KeyboardInterrupt`)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, frame: object) -> None:
    raise Stopped(signum)


#: True while :func:`run_guarded` turns SIGTERM into :class:`Stopped`
_ARMED = [False]


def rearm_sigterm(*modules: str) -> None:
    """Import ``modules`` and then put the SIGTERM handler of :func:`run_guarded` back in place.

    Some libraries install native signal handlers when imported: pycolmap's glog prints a 30-line stack trace on
    SIGTERM. A command calls this (after checking its arguments) before work that imports them.
    """
    for module in modules:
        __import__(module)
    if _ARMED[0]:
        signal.signal(signal.SIGTERM, _raise_stopped)


def run_guarded(prog: str, body: Callable[[], Optional[int]], resume_hint: Optional[str] = None) -> int:
    """Run a command's body; bad input -> one line and exit code 2, Ctrl-C / SIGTERM -> one line and 130 / 143.

    SIGTERM raises :class:`Stopped` in the main thread, so ``finally`` clauses run and temporary files go.

    Args:
        resume_hint: appended to the stop message, e.g. "run the same command again to resume".
    """
    try:
        previous, armed = signal.signal(signal.SIGTERM, _raise_stopped), True
    except ValueError:  # not the main thread: leave signals alone
        previous, armed = None, False
    outer, _ARMED[0] = _ARMED[0], armed
    try:
        return int(body() or 0)
    except KeyboardInterrupt as err:
        signum = err.signum if isinstance(err, Stopped) else int(signal.SIGINT)
        how = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        print(f"{prog}: stopped by {how}" + (f"; {resume_hint}" if resume_hint else ""), file=sys.stderr)
        return 128 + signum
    except user_errors() as err:
        if os.environ.get("ASMAMBA_TRACEBACK") == "1":
            raise
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return 2
    finally:
        _ARMED[0] = outer
        if armed:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


class TqdmLogHandler(logging.Handler):
    """Log records through ``tqdm.write``: a line never lands inside a progress bar. INFO lines are the bare
    message; warnings and errors say so."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.levelno >= logging.WARNING:
                message = f"{record.levelname.lower()}: {message}"
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def setup_logging(level: int = logging.INFO) -> None:
    """Route the ``asmamba`` loggers through :class:`TqdmLogHandler` (once)."""
    for name in ("asmamba", "asmamba_hloc"):
        log = logging.getLogger(name)
        log.setLevel(level)
        if not any(isinstance(h, TqdmLogHandler) for h in log.handlers):
            log.addHandler(TqdmLogHandler())
        log.propagate = False
