"""`python -m posbench {train,eval,compare} ...`: dispatch only."""

from __future__ import annotations

import sys

USAGE = """usage: python -m posbench COMMAND [hydra overrides]

commands:
  train     train a model and evaluate it at eval.lengths   (e.g. train encoding=alibi)
  eval      evaluate a saved checkpoint, or a pretrained    (e.g. eval checkpoint=runs/.../last.pt,
            Llama-family model                                    eval hf=meta-llama/Llama-3.2-1B)
  compare   compare extrapolation curves of finished runs   (e.g. compare runs/train_length_sweep/<sweep>)

Each command has its own --help (train --help lists the config groups and options).
A one-minute first run: python -m posbench train debug=smoke
"""


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command == "compare":
        from posbench.reports.compare import main as compare_main

        compare_main(rest)
        return
    from posbench.cli import COMMANDS, run_hydra

    if command not in COMMANDS:
        print(
            f"error: unknown command {command!r}; valid commands: {', '.join([*COMMANDS, 'compare'])} "
            "(python -m posbench --help says what each does)",
            file=sys.stderr,
        )
        sys.exit(2)
    run_hydra(command, rest)


def run() -> None:
    """``main``, with a Ctrl-C that arrives before any job code (while torch and Hydra import) ending
    in one line: nothing has been written yet."""
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C) before anything was written; run the command again", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    run()
