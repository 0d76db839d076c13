"""Protobuf stubs that services share, written by scripts/gen_proto.py from proto/: never edit them by hand."""
