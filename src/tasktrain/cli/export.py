"""``tasktrain export CKPT OUT``: a checkpoint's weights as one safetensors file, or (``--format hf``) a
Hugging Face ``from_pretrained`` directory."""

from __future__ import annotations

import argparse

from tasktrain.cli.errors import CLIError

FORMATS = ("safetensors", "hf")


def export_main(argv: list[str]) -> int:
    """Consolidate the checkpoint ``CKPT`` (any strategy's, sharded or not) into ``OUT``.

    ``--format hf`` writes an ``HFTask`` run's model as a directory for ``from_pretrained``
    (``config.json`` and safetensors under transformers' key names; a PEFT adapter directory for a
    PEFT model), see :func:`tasktrain.hf.save_pretrained`.

    Example:
        >>> export_main(["runs/checkpoints/step=00000200", "model.safetensors"])  # doctest: +SKIP
        0
        >>> export_main(["last", "my-bert", "--format", "hf"])  # doctest: +SKIP
        0
        >>> export_main(["last", "ema.safetensors", "--weights", "ema"])  # doctest: +SKIP
        0
    """
    parser = argparse.ArgumentParser(
        prog="tasktrain export",
        description="Write the weights of a checkpoint (from any strategy, sharded or not) as one "
        "safetensors file that any safetensors reader loads. Tied weights are stored once.",
    )
    parser.add_argument("ckpt", metavar="CKPT", help="a checkpoint directory or URL, or 'last'")
    parser.add_argument(
        "out",
        metavar="OUT",
        help="the .safetensors file to write (a path or URL); with --format hf, the directory to write",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="safetensors",
        help="safetensors: one file of the module's weights (default); hf: a Hugging Face from_pretrained "
        "directory of an HFTask run's model (config.json + safetensors, or a PEFT adapter directory)",
    )
    parser.add_argument(
        "--root_dir",
        default="runs",
        help="where CKPT=last looks for the newest complete checkpoint (default: runs)",
    )
    parser.add_argument(
        "--weights",
        choices=("model", "ema"),
        default="model",
        help="the trained weights (model, the default) or the EMA callback's averaged weights (ema)",
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
        if args.format == "hf":
            from tasktrain.hf import save_pretrained

            save_pretrained(source, args.out, weights=args.weights)
        else:
            consolidate(source, args.out, args.weights)
    except (
        OSError,
        ValueError,
        ImportError,
    ) as error:  # e.g. OUT's directory is not writable, a corrupt shard
        raise CLIError(f"exporting {source} to {args.out} failed: {error}") from error
    print(f"exported {source}{' (EMA weights)' if args.weights == 'ema' else ''} -> {args.out}")
    return 0
