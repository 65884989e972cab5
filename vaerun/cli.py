"""`vaerun <command> ...`: a thin dispatcher. No torch import here (tab completion imports it)."""
from __future__ import annotations

import os
import sys

from vaerun.overrides import expand_home

COMMANDS = {
    "train": "train a VAE: vaerun train [group=option ...] [key=value ...]; -m to sweep; resume=RUN",
    "plan": "what a train command will do, without training: length, β / lr at each turn, audit: vaerun plan [-m] [overrides]",
    "eval": "the importance-weighted NLL on a whole split: vaerun eval RUN|SWEEP [--iw-samples K] [--split test]",
    "diagnose": "verdicts with evidence and next steps: vaerun diagnose RUN|SWEEP",
    "compare": "one report across run or sweep folders: vaerun compare PATH... [--sort KEY] [--format json|csv]",
    "sample": "a grid of samples: vaerun sample RUN [--n 64] [--temperature T] [--seed S] [--z prior|gaussian|gmm]",
    "traverse": "latent traversals, rows sorted by KL: vaerun traverse RUN [--dims auto|0,3] [--range R] [--steps K]",
    "interpolate": "decoded paths between encoded images: vaerun interpolate RUN [--pairs P] [--mode linear|slerp]",
    "latents": "latent map + posterior σ per dim: vaerun latents RUN [--color-by FACTOR]",
}

USAGE = """usage: vaerun <command> [args]

A Hydra-driven experiment runner for variational autoencoders.

commands:
{commands}

`vaerun <command> --help` shows a command's options; `vaerun train --help` lists every config
group, option and key. Documentation: README.md and docs/ (every key: docs/config.md).
"""


def _usage() -> str:
    width = max(map(len, COMMANDS))
    return USAGE.format(commands="\n".join(f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()))


def _train(args: list[str]) -> int:
    from vaerun.config import register_configs
    from vaerun.confcheck import check, check_sweep, should_check

    register_configs()
    args = expand_home(args)
    multirun = "-m" in args or "--multirun" in args
    if should_check(args) or multirun and should_check([a for a in args if a not in ("-m", "--multirun")]):
        problem = check(args) if not multirun else check_sweep([a for a in args if a not in ("-m", "--multirun")])
        if problem:
            print(f"vaerun train: config error: {problem}", file=sys.stderr)
            return 2
    from vaerun.app import train_main

    extra = [sweep_dirname_override(args)] if multirun else []
    resume = _value(args, "resume")
    if resume and not multirun:  # continue in the run's own folder; keep its .hydra/ as it was
        extra += [f"hydra.run.dir={resume}", "hydra.output_subdir=null"]
    sys.argv = [sys.argv[0], *_flags_then_overrides(args, extra)]
    train_main()
    return 0


_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                     "--config-dir", "-cd", "--experimental-rerun"}


def _flags_then_overrides(args: list[str], extra: list[str]) -> list[str]:
    """Hydra's argparse takes overrides in one run of positionals: flags (with their values)
    first, then every override, ours included."""
    flags, overrides, i = [], [], 0
    while i < len(args):
        if args[i].startswith("-"):
            takes = args[i] in _FLAGS_WITH_VALUE or (args[i] == "--info" and i + 1 < len(args) and "=" not in args[i + 1])
            flags += args[i:i + 1 + takes]
            i += 1 + takes
        else:
            overrides.append(args[i])
            i += 1
    return [*flags, *overrides, *extra]


def _value(args: list[str], key: str):
    """The value given to ``key=`` on the command line (the last one), or None."""
    values = [a.split("=", 1)[1] for a in args if a.split("=", 1)[0] == key and "=" in a]
    return values[-1] if values else None


def sweep_dirname_override(args: list[str]) -> str:
    """Names each multirun job folder by the swept overrides only (``3_beta=2,seed=1``), not by
    every override on the command line: the keys given a single value are excluded."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    fixed = {"out_dir", "progress", "device"}
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    for o in OverridesParser.create().parse_overrides(overrides):
        if not o.is_sweep_override() and not o.key_or_group.startswith("hydra"):
            fixed.add(o.key_or_group)
    return f"hydra.job.config.override_dirname.exclude_keys=[{','.join(sorted(fixed))}]"


def _completion(args: list[str]) -> int:
    """Hydra's shell completion calls `vaerun -sc query=bash` with COMP_LINE='vaerun train ...':
    drop the subcommand from COMP_LINE so Hydra completes the train config."""
    words = os.environ.get("COMP_LINE", "").split(" ")
    if len(words) < 3:
        print(" ".join(COMMANDS))
        return 0
    cmd = words.pop(1)
    os.environ["COMP_LINE"] = " ".join(words)
    os.environ["COMP_POINT"] = str(max(int(os.environ.get("COMP_POINT", "0")) - len(cmd) - 1, 0))
    return _train(args)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if args[0] == "--version":
        from vaerun.version import __version__

        print(f"vaerun {__version__}")
        return 0
    if args[0] in ("-sc", "--shell-completion"):
        return _completion(args)
    command, rest = args[0], args[1:]
    if command == "train":
        return _train(rest)
    if command in ("plan", "eval", "diagnose", "compare", "sample", "traverse", "interpolate", "latents"):
        from vaerun import commands

        return commands.guarded(getattr(commands, f"{command}_main"), rest)
    import difflib

    near = difflib.get_close_matches(command, COMMANDS, n=1)
    print(f"vaerun: unknown command '{command}'. Commands: {', '.join(COMMANDS)}\n"
          f"  fix: vaerun {near[0] if near else 'train'} ... (vaerun --help lists every command)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    """Console-script entry point: exit with main()'s status. Output piped into a reader that
    stops early (``vaerun compare --format json | head``) ends quietly, as other command-line tools do."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        code = 141  # 128 + SIGPIPE, what the shell reports for a tool killed by the broken pipe
    sys.exit(code)
