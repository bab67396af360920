"""The `electra-jax` command. Every error a user can cause ends in one clear line and a non-zero exit."""

from __future__ import annotations

import argparse
import sys

from electra_jax.config import ConfigError, load_config


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    overrides = [a for a in argv if a.startswith("--config.")]
    return [a for a in argv if not a.startswith("--config.")], overrides


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="electra-jax", description="ELECTRA pretraining in JAX. Config fields can be overridden "
        "with --config.<field>=<value>, e.g. --config.model.hidden_size=512.")
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="time the jitted train step on synthetic batches")
    bench.add_argument("--config", required=True, help="a config file, e.g. configs/tiny.py")
    bench.add_argument("--steps", type=int, default=10, help="timed steps after warm-up")
    bench.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    bench.add_argument("--results", default="bench_results.jsonl",
                       help="JSON-lines file the result is appended to")
    bench.add_argument("--peak-tflops", type=float, default=None,
                       help="per-device peak for MFU where the device kind is not in the table")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args_only, overrides = _split_overrides(argv)
    args = _parser().parse_args(args_only)
    try:
        config = load_config(args.config, overrides)
        if args.command == "bench":
            from electra_jax import bench

            if args.steps < 1 or args.warmup < 0:
                raise ConfigError("--steps must be >= 1 and --warmup >= 0")
            result = bench.run(config, steps=args.steps, warmup=args.warmup, peak=args.peak_tflops)
            print(bench.report(result))
            bench.append_result(result, args.results)
            print(f"  appended to {args.results}")
    except ConfigError as e:
        print(f"electra-jax: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
