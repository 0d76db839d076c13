"""Regenerates the committed Python protobuf stubs: model_server/grpc_gen from proto/inference.proto and
common/proto_gen from proto/stat.proto.

    python scripts/gen_proto.py               # rewrite the committed stubs (``make proto``)
    python scripts/gen_proto.py --out DIR     # write every stub side by side in DIR (the freshness tests do this)

protoc's output is patched, and the run fails if a patch no longer finds what it replaces:

- ``inference_pb2_grpc.py`` imports ``inference_pb2`` as a top-level module; it becomes a package-relative
  import so the stubs work from their folder without touching ``sys.path``.
- ``*_pb2.py`` registers its messages in protobuf's process-wide default descriptor pool. Triton's and
  KServe's stubs define the same ``inference.*`` message names there, so importing tritonclient.grpc (a user's
  model may well do so) next to our stubs would fail with "duplicate symbol"; Knative's ``metrics.Stat`` could
  clash the same way. Our stubs get a pool of their own; the wire format does not depend on the pool.

Stubs outside ``model_server/grpc_gen`` (which pyproject.toml keeps out of ruff) start with ``# ruff: noqa``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
OWN_POOL = (
    "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(",
    "DESCRIPTOR = _descriptor_pool.DescriptorPool().AddSerializedFile(",
)


@dataclass(frozen=True)
class Stubs:
    """One .proto file and the folder its patched stubs are committed to."""

    proto: Path
    out: Path
    files: tuple[str, ...]
    patches: dict[str, tuple[str, str]] = field(default_factory=dict)
    grpc: bool = False  # also generate the service stubs (*_pb2_grpc.py)
    header: str = ""  # prepended to every file


INFERENCE = Stubs(
    proto=ROOT / "proto" / "inference.proto",
    out=ROOT / "model_server" / "grpc_gen",
    files=("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py"),
    patches={
        "inference_pb2_grpc.py": (
            "\nimport inference_pb2 as inference__pb2\n",
            "\nfrom model_server.grpc_gen import inference_pb2 as inference__pb2\n",
        ),
        "inference_pb2.py": OWN_POOL,
    },
    grpc=True,
)
STAT = Stubs(
    proto=ROOT / "proto" / "stat.proto",
    out=ROOT / "common" / "proto_gen",
    files=("stat_pb2.py", "stat_pb2.pyi"),
    patches={"stat_pb2.py": OWN_POOL},
    header="# ruff: noqa\n",
)
ALL = (INFERENCE, STAT)


def generate(stubs: Stubs, out_dir: Path | None = None) -> list[Path]:
    """Write the patched stubs into ``out_dir`` (default: their committed folder); nothing is written unless
    every step succeeds."""
    out_dir = stubs.out if out_dir is None else out_dir
    with tempfile.TemporaryDirectory() as tmp:
        _run_protoc(stubs, Path(tmp))
        for name, (old, new) in stubs.patches.items():
            _patch(Path(tmp) / name, old, new)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in stubs.files:
            (out_dir / name).write_bytes(stubs.header.encode() + (Path(tmp) / name).read_bytes())
            written.append(out_dir / name)
        return written


def _run_protoc(stubs: Stubs, out_dir: Path) -> None:
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"--proto_path={stubs.proto.parent}",
        f"--proto_path={well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
    ]
    if stubs.grpc:
        args.append(f"--grpc_python_out={out_dir}")
    code = protoc.main([*args, str(stubs.proto)])
    if code != 0:
        raise RuntimeError(f"protoc failed with exit status {code} on {stubs.proto}")


def _patch(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    if text.count(old) != 1:
        raise RuntimeError(f"{path.name}: expected exactly one {old.strip()!r} in protoc's output; update the patches")
    path.write_text(text.replace(old, new))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="one folder for every stub (default: each stub's committed folder)")
    args = parser.parse_args(argv)
    for stubs in ALL:
        for path in generate(stubs, args.out):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
