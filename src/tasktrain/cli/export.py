"""``tasktrain export CKPT OUT.safetensors``: a checkpoint's weights as one safetensors file."""

from __future__ import annotations

import argparse

from tasktrain.cli.errors import CLIError


def export_main(argv: list[str]) -> int:
    """Consolidate the checkpoint ``CKPT`` (any strategy's, sharded or not) into ``OUT``.

    Example:
        >>> export_main(["runs/checkpoints/step=00000200", "model.safetensors"])  # doctest: +SKIP
        0
    """
    parser = argparse.ArgumentParser(
        prog="tasktrain export",
        description="Write the weights of a checkpoint (from any strategy, sharded or not) as one "
        "safetensors file that any safetensors reader loads. Tied weights are stored once.",
    )
    parser.add_argument("ckpt", metavar="CKPT", help="a checkpoint directory or URL, or 'last'")
    parser.add_argument("out", metavar="OUT", help="the .safetensors file to write (a path or URL)")
    parser.add_argument(
        "--root_dir",
        default="runs",
        help="where CKPT=last looks for the newest complete checkpoint (default: runs)",
    )
    args = parser.parse_args(argv)  # usage errors: argparse's message, exit status 2
    from tasktrain.checkpoint import consolidate
    from tasktrain.checkpoint.manager import resolve_ckpt_path

    try:
        source = resolve_ckpt_path(args.ckpt, args.root_dir)
    except (OSError, ValueError) as error:
        raise CLIError(f"CKPT: {error}") from error
    if source is None:
        raise CLIError(f"CKPT: {args.ckpt!r}: no checkpoint under --root_dir {args.root_dir!r}")
    try:
        consolidate(source, args.out)
    except (OSError, ValueError) as error:  # e.g. OUT's directory is not writable, a corrupt shard
        raise CLIError(f"exporting {source} to {args.out} failed: {error}") from error
    print(f"exported {source} -> {args.out}")
    return 0
