"""The worker of another checkout, for A/B runs of two commits on the same machine.

    git worktree add /tmp/old <commit>
    AB_TREE=/tmp/old AB_DROP=STREAMPROC_INGEST__LINKED_SESSIONS \
        python -m load_tests.ab --variant load_tests.tree_worker

The variant arm imports ``streamproc`` from ``$AB_TREE`` instead of this tree, so
the two arms differ only in the code under test (same venv, broker, Redis, topics).
``$AB_DROP`` lists settings (comma-separated) the other checkout does not know yet:
it rejects unknown settings at start-up.
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    """Run ``streamproc worker`` from ``$AB_TREE``."""
    tree = os.environ.get("AB_TREE")
    if not tree:
        raise SystemExit("set AB_TREE to the checkout whose worker should run")
    for name in filter(None, os.environ.get("AB_DROP", "").split(",")):
        os.environ.pop(name.strip(), None)
    sys.path.insert(0, os.path.abspath(tree))
    for name in [m for m in sys.modules if m == "streamproc" or m.startswith("streamproc.")]:
        del sys.modules[name]
    from streamproc.cli import main as cli_main

    sys.argv = ["streamproc", "worker"]
    return int(cli_main() or 0)


if __name__ == "__main__":
    raise SystemExit(main())
