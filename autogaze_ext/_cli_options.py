"""Command-line options shared by several commands (a leaf module: argparse only, so every CLI module can import it
at load time without an import cycle)."""
from __future__ import annotations

import argparse


def add_ray_options(parser: argparse.ArgumentParser, *, actor: str, ray_help: str) -> argparse._ArgumentGroup:
    """The --ray group of ``encode`` and ``label``: --ray, --address, --gpus, --cpus-per-gpu; the caller adds its own
    options to the returned group, then --index (add_index_option)."""
    r = parser.add_argument_group("dataset scale (Ray Data; pip install 'autogaze_ext[ray]')")
    r.add_argument("--ray", action="store_true", help=ray_help)
    r.add_argument("--address", help="Ray cluster to join (auto, ray://HOST:10001); default: start a local Ray")
    r.add_argument("--gpus", type=int, default=None, metavar="N",
                   help=f"{actor} actors, one GPU each (default: every GPU of the cluster; CPU workers with "
                        "--device cpu, default 1)")
    r.add_argument("--cpus-per-gpu", type=float, default=None, metavar="C",
                   help="CPUs reserved per actor, for its decoding (default: the cluster's CPUs, less one, shared)")
    return r


def add_index_option(group: argparse._ArgumentGroup, index_help: str) -> None:
    """--index, the run's Parquet index, with the command's own default in its help."""
    group.add_argument("--index", metavar="FILE.parquet", help=index_help)
