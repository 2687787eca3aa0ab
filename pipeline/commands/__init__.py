"""Command-line subcommands. Each module exposes `add_arguments(parser)` and `main(args) -> int`."""
