"""Command line of the agent: ``python -m azmanagers.agent worker|detached|head --payload FILE``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the role and run it; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m azmanagers.agent")
    parser.add_argument("role", choices=["worker", "detached", "head"])
    parser.add_argument(
        "--payload", required=True, help="the boot payload (gzip JSON, base64-decoded)"
    )
    args = parser.parse_args(argv)
    if args.role == "head":
        from azmanagers.agent.head import main as head_main

        return head_main(args.payload)
    if args.role == "detached":
        from azmanagers.agent.service.app import main as detached_main

        return detached_main(args.payload)
    from azmanagers.agent.worker import main as worker_main

    return worker_main(args.payload)


if __name__ == "__main__":
    sys.exit(main())
