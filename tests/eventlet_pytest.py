"""Run pytest with eventlet monkey-patching applied first: the nameko test session (DESIGN §4).

The main test session must never be patched (a grpcio server inside an eventlet-patched process
hangs), so nameko tests run in their own interpreter through this entry point.
"""

import eventlet

eventlet.monkey_patch()

import sys  # noqa: E402  (must come after monkey_patch)

import pytest  # noqa: E402


def main() -> int:
    return int(pytest.main(["-p", "no:cacheprovider", "--suppress-nameko-eventlet-notification", *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
