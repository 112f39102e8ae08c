"""The ``harness`` command. Bad input is one line on stderr and exit status 2; nothing is written."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def cmd_train(args) -> int:
    from .data import DataUnavailable
    from .tracking import NullTracker
    from .train import NonFiniteLoss, train

    config = load_config(args.config, args.set)
    run_dir = Path(args.run_dir) if args.run_dir else REPO / "runs" / config.train_hash()
    print(f"config {config.train_hash()}  run dir {run_dir}")
    try:
        result = train(config, NullTracker(), run_dir=run_dir)
    except DataUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLoss as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    summary = result.to_json()
    t = summary["train"]
    print(f"trained {t['steps']} steps, {t['num_parameters']:,} parameters: final loss {t['final_loss']:.4f}, "
          f"{t['images_per_second']:.0f} images/s; domain classifier accuracy {summary['classifier_accuracy']:.4f}")
    keys = ["fid", "kid", "precision", "recall", "recognizability", "class_accuracy", "fid_inception", "nfe",
            "sample_seconds"]
    for e in summary["evals"]:
        print(f"  {e['setting']}: " + "  ".join(f"{k} {_fmt(e[k])}" for k in keys if k in e))
        if "fid_inception_unavailable" in e:
            print(f"    fid_inception unavailable: {e['fid_inception_unavailable']}")
    print(f"recognizable at step: {summary['recognizable_at_step']}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description="Ablation studies of DDPM-family diffusion models.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train and evaluate one configuration")
    t.add_argument("config", nargs="?", help="YAML file with data/model/diffusion/train/eval sections")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field, e.g. train.steps=200")
    t.add_argument("--json", metavar="PATH", help="write the metrics as JSON")
    t.add_argument("--run-dir", metavar="DIR", help="checkpoints and grids (default: runs/<config hash>)")
    t.set_defaults(func=cmd_train)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is kept and the run resumes from it", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
