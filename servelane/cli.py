"""``servelane <command> [flags]``: one subcommand per component (each the component's own ``__main__``), plus
``up``, ``apply`` and ``status``, which run and talk to the whole stack (controller/up.py)."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {  # command: (module, function taking argv)
    "up": ("controller.up", "up"),
    "apply": ("controller.up", "apply"),
    "status": ("controller.up", "status"),
    "gateway": ("gateway.__main__", "main"),
    "queue-proxy": ("queue_proxy.__main__", "main"),
    "model-server": ("model_server.__main__", "main"),
}
USAGE = """usage: servelane <command> [flags]   (servelane <command> --help for its flags)

the whole stack:
  up FILE|DIR ...     run InferenceServices: controller, gateway, replicas; Ctrl-C stops everything
  apply FILE|DIR ...  apply specs to a running `servelane up`
  status              services, revisions, traffic and replicas of a running `servelane up`

one component:
  gateway             the ingress: routing by host and model name, traffic splits
  queue-proxy         concurrency gate, timeouts, drain and metrics in front of a model server
  model-server        KServe V1 / Open Inference Protocol server (REST and gRPC)
"""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    target = COMMANDS.get(args[0])
    if target is None:
        print(f"servelane: unknown command {args[0]!r}; one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module, function = target
    return int(getattr(importlib.import_module(module), function)(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
