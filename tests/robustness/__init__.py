"""The bad-input suite: generated bad inputs for every surface we own, each run in a forked child so
that a crash or a hang is a result, not a dead test session. ``cases`` builds them, ``runner`` runs and
classifies them; tests/test_bad_inputs.py asserts that every case is a clear error or a correct acceptance."""
