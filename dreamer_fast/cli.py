"""The ``dreamer-fast`` command.

    dreamer-fast train --config atari --env atari/Pong --logdir runs/pong [--steps N] [--device cpu|cuda] [--seed S]
                       [--resume] [--set key=value ...] [--<any config key> value ...]
    dreamer-fast eval --checkpoint runs/pong/checkpoint.pt [--episodes 5] [--device cpu]
    dreamer-fast config --config small,debug [--set key=value ...]     # print the resolved configuration

``--config`` presets stack: ``--config a,b`` or ``--config a --config b`` applies ``a`` then ``b`` over the defaults.
Every key of :class:`dreamer_fast.config.Config` can then be overridden, either as ``--key value`` or
``--set key=value`` (``--set`` last); ``dreamer-fast train --help`` lists them with type, default and doc.
Every failure (bad arguments, values, keys, environments, unreadable checkpoints, replay chunks, config.yaml or
metrics.csv, a logdir that cannot be written, diverged training) exits with status 2 and one line on stderr;
an interrupt outside training's step loop exits with status 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import yaml

from dreamer_fast.config import CHOICES, Config, field_docs, load_config, presets, show_value


def _config_overrides(parser: argparse.ArgumentParser) -> None:
    """``--<key> V`` for every config key, grouped by the sections of :class:`Config`, and ``--set KEY=VALUE``."""
    parser.add_argument("--set", dest="set", metavar="KEY=VALUE", action="append", default=[],
                        help="override a config key (repeatable; applied after the --<key> options)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(Config):
        section, doc = field_docs()[f.name]
        if section not in groups:
            groups[section] = parser.add_argument_group(f"config: {section}")
        kind = "|".join(CHOICES[f.name]) if f.name in CHOICES else f.type
        help_text = f"{kind}, default {show_value(f.default)}: {doc}".replace("%", "%%")
        groups[section].add_argument(f"--{f.name}", dest=f"cfg_{f.name}", metavar=f.type.upper(), default=None,
                                     help=help_text)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key.startswith("cfg_") and value is not None:
            values[key[4:]] = value
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        values[key.strip()] = value
    return values


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors as one line (exit status 2)."""

    def error(self, message: str) -> None:
        self.exit(2, f"dreamer-fast: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dreamer-fast", description="DreamerV2 with fused kernels.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train an agent (or continue one with --resume)")
    train.add_argument("--config", action="append", default=None, metavar="PRESET[,PRESET...]",
                       help=f"presets applied left to right over the defaults (comma-separated or repeated): "
                       f"{', '.join(presets())} (default atari; with --resume the run's own config.yaml is used, and "
                       "the presets must agree with it on the keys that set parameter shapes)")
    train.add_argument("--logdir", required=True, type=Path, help="where logs, plots and checkpoints go")
    train.add_argument("--resume", action="store_true", help="continue the run in --logdir from its checkpoint")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    _config_overrides(train)

    ev = sub.add_parser("eval", help="greedy evaluation episodes of a checkpoint")
    ev.add_argument("--checkpoint", required=True, type=Path)
    ev.add_argument("--episodes", type=int, default=5)
    ev.add_argument("--device", default=None)

    show = sub.add_parser("config", help="print the resolved configuration of presets with overrides")
    show.add_argument("--config", action="append", default=None, metavar="PRESET[,PRESET...]",
                      help=f"presets applied left to right over the defaults (comma-separated or repeated): "
                      f"{', '.join(presets())} (default atari)")
    _config_overrides(show)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except ValueError as e:  # config, env id, checkpoint, replay, divergence: one clear line, no traceback
        print(f"dreamer-fast: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system refused a read or write
        where = f": {e.filename}" if e.filename else ""
        print(f"dreamer-fast: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dreamer-fast: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    if args.command == "config":
        config = load_config(args.config or "atari", _overrides(args))
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    if args.command == "eval":
        from dreamer_fast.envs import make_env
        from dreamer_fast.training.evaluation import evaluate, load_agent

        if args.episodes < 1:
            raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
        agent, config, ckpt = load_agent(args.checkpoint, args.device)
        env = make_env(config, seed=config.seed + 10_000)
        returns = evaluate(agent, env, args.episodes)
        env.close()
        mean = sum(returns) / len(returns)
        print(f"{config.env}: {len(returns)} greedy episodes after {ckpt['step']:,} steps: mean return {mean:.2f} "
              f"({', '.join(f'{r:.1f}' for r in returns)})")
        return 0

    from dreamer_fast.training.resume import read_run_config
    from dreamer_fast.training.loop import train

    overrides = _overrides(args)
    if args.resume:
        config = read_run_config(args.logdir, overrides, args.config)
    else:
        config = load_config(args.config or "atari", overrides)
    result = train(config, args.logdir, resume=args.resume, progress=not args.no_progress)
    if result.get("rank", 0):  # under torchrun rank 0 reports
        return 130 if result["interrupted"] else 0
    status = "interrupted" if result["interrupted"] else "finished"
    print(f"dreamer-fast: {status} at step {result['step']:,} ({result['updates']:,} updates, "
          f"{result['episodes']:,} episodes); logs, plots and checkpoint in {result['logdir']}")
    if "eval_returns" in result:
        print(f"dreamer-fast: greedy evaluation returns {result['eval_returns']}")
    return 130 if result["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
