"""Running a stage entry point: user errors and Ctrl-C become one line and an exit code, not a traceback."""
from __future__ import annotations

import sys
from typing import Callable

from robust_cifar.errors import UserError

USER_ERROR_EXIT = 2
INTERRUPTED_EXIT = 130  # the shell's code for a process ended by SIGINT


def run_stage(main: Callable[[list[str]], None]) -> None:
    try:
        main(sys.argv[1:])
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT) from None
    except KeyboardInterrupt:
        print("interrupted: no output of this stage was written; rerun it with `dvc repro`", file=sys.stderr)
        raise SystemExit(INTERRUPTED_EXIT) from None
