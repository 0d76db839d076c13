"""Regenerates the Python gRPC stubs in model_server/grpc_gen from proto/inference.proto.

    python scripts/gen_proto.py               # rewrite the committed stubs (``make proto``)
    python scripts/gen_proto.py --out DIR     # write them somewhere else (the freshness test does this)

protoc's output is patched twice, and the run fails if either patch no longer finds what it replaces:

- ``inference_pb2_grpc.py`` imports ``inference_pb2`` as a top-level module; it becomes a package-relative
  import so the stubs work from their folder without touching ``sys.path``.
- ``inference_pb2.py`` registers its messages in protobuf's process-wide default descriptor pool. Triton's and
  KServe's stubs define the same ``inference.*`` message names there, so importing tritonclient.grpc (a user's
  model may well do so) next to our stubs would fail with "duplicate symbol". Our stubs get a pool of their own;
  the wire format does not depend on the pool.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto" / "inference.proto"
OUT = ROOT / "model_server" / "grpc_gen"
PACKAGE = "model_server.grpc_gen"
FILES = ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py")

PATCHES = {
    "inference_pb2_grpc.py": (
        "\nimport inference_pb2 as inference__pb2\n",
        f"\nfrom {PACKAGE} import inference_pb2 as inference__pb2\n",
    ),
    "inference_pb2.py": (
        "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(",
        "DESCRIPTOR = _descriptor_pool.DescriptorPool().AddSerializedFile(",
    ),
}


def generate(out_dir: Path, proto: Path = PROTO) -> list[Path]:
    """Write the patched stubs for ``proto`` into ``out_dir``; nothing is written unless every step succeeds."""
    with tempfile.TemporaryDirectory() as tmp:
        _run_protoc(proto, Path(tmp))
        for name, (old, new) in PATCHES.items():
            _patch(Path(tmp) / name, old, new)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in FILES:
            shutil.copyfile(Path(tmp) / name, out_dir / name)
            written.append(out_dir / name)
        return written


def _run_protoc(proto: Path, out_dir: Path) -> None:
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"--proto_path={proto.parent}",
        f"--proto_path={well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(proto),
    ]
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit status {code} on {proto}")


def _patch(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    if text.count(old) != 1:
        raise RuntimeError(f"{path.name}: expected exactly one {old.strip()!r} in protoc's output; update PATCHES")
    path.write_text(text.replace(old, new))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
