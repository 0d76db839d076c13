"""``servelane <component> [flags]``: one subcommand per component, each the component's own ``__main__``."""

from __future__ import annotations

import importlib
import sys

COMPONENTS = {
    "gateway": "gateway.__main__",
    "model-server": "model_server.__main__",
    "queue-proxy": "queue_proxy.__main__",
}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: servelane <component> [flags]\n\ncomponents:\n" + "".join(f"  {c}\n" for c in COMPONENTS))
        return 0 if args else 2
    module = COMPONENTS.get(args[0])
    if module is None:
        print(f"servelane: unknown component {args[0]!r}; one of: {', '.join(COMPONENTS)}", file=sys.stderr)
        return 2
    return int(importlib.import_module(module).main(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
