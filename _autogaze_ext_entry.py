"""The ``autogaze-ext`` command's entry point, outside the ``autogaze_ext`` package on purpose.

Importing ``autogaze_ext`` imports torch, and torch starts its OpenMP runtime, which reads
``OMP_WAIT_POLICY`` once, at that moment. The command's CPU policy wants idle OpenMP threads to sleep rather
than spin (``OMP_WAIT_POLICY=PASSIVE``; README "CPU threads"), so it is set here, before anything imports
torch. A value already in the environment is kept.
"""
import os
import sys


def main() -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from autogaze_ext.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
