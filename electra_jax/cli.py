"""The `electra-jax` command. Every error a user can cause ends in one clear line and a non-zero exit."""

from __future__ import annotations

import argparse
import os
import sys

from electra_jax.config import ConfigError, load_config
from electra_jax.data.builder import DataError
from electra_jax.data.tokenizer import TokenizerError
from electra_jax.train import TrainingError


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

    pre = sub.add_parser("pretrain", help="pretrain (resumes from the latest checkpoint in --workdir)")
    pre.add_argument("--config", required=True, help="a config file, e.g. configs/small.py")
    pre.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl and config.json go here")
    pre.add_argument("--data", default=None, help="a build-data directory (sets config.data.path)")

    tok = sub.add_parser("tokenizer", help="train an uncased WordPiece vocabulary")
    tok.add_argument("--input", nargs="+", default=None,
                     help="text files or globs (.gz ok); default: the shipped sample corpus")
    tok.add_argument("--vocab-size", type=int, default=30522)
    tok.add_argument("--min-frequency", type=int, default=2)
    tok.add_argument("--out", required=True, help="directory to write (AutoTokenizer loads it)")

    data = sub.add_parser("build-data", help="text -> packed pretraining examples (TFRecord shards)")
    src = data.add_mutually_exclusive_group()
    src.add_argument("--input", nargs="+", help="text files or globs (.gz ok); blank lines end documents")
    src.add_argument("--tfds", help="a TensorFlow Datasets text dataset, NAME[:SPLIT]")
    data.add_argument("--text-key", default="text", help="the TFDS feature holding the text")
    data.add_argument("--tfds-data-dir", default=None, help="where TFDS data is prepared (or gs://)")
    data.add_argument("--tokenizer", default=None,
                      help="tokenizer directory or vocab.txt; default: the sample corpus's tokenizer")
    data.add_argument("--seq-len", type=int, default=128)
    data.add_argument("--max-positions", type=int, default=512, help="the model's position table size")
    data.add_argument("--out", required=True)
    data.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)))
    data.add_argument("--shards", type=int, default=16)
    data.add_argument("--eval-fraction", type=float, default=0.0,
                      help="share of documents held out for evaluation")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--overwrite", action="store_true", help="replace a different build in --out")
    data.add_argument("--max-line-chars", type=int, default=100_000,
                      help="longer lines are split at spaces into several units")

    bench_data = sub.add_parser("bench-data", help="time the example builder and the tf.data reader")
    bench_data.add_argument("--results", default="bench_results.jsonl")
    bench_data.add_argument("--fake-devices", type=int, default=8,
                            help="CPU devices to lay batches over (sets XLA_FLAGS before jax starts)")
    return parser


def _tokenizer_command(args) -> None:
    from electra_jax.data import SAMPLE_CORPUS
    from electra_jax.data.builder import ReadStats, expand_inputs, iter_file_documents
    from electra_jax.data.tokenizer import save_tokenizer, train_tokenizer

    files = expand_inputs(args.input) if args.input else [SAMPLE_CORPUS]
    if args.vocab_size < 16:
        raise ConfigError("--vocab-size must be at least 16")
    stats = ReadStats()
    lines = (line for doc in iter_file_documents(files, stats, 100_000) for line in doc)
    tok = train_tokenizer(lines, args.vocab_size, args.min_frequency)
    if not stats.lines:
        raise DataError(f"{', '.join(files)}: no non-empty lines to learn a vocabulary from")
    save_tokenizer(tok, args.out)
    print(f"wrote a {tok.get_vocab_size()}-token vocabulary to {args.out}")


def _build_data_command(args) -> None:
    from electra_jax.data import SAMPLE_CORPUS, SAMPLE_TOKENIZER
    from electra_jax.data.builder import BuildArgs, build

    inputs = args.input or ([] if args.tfds else [SAMPLE_CORPUS])
    manifest = build(BuildArgs(
        tokenizer=args.tokenizer or SAMPLE_TOKENIZER, out=args.out, inputs=inputs, tfds=args.tfds, text_key=args.text_key, tfds_data_dir=args.tfds_data_dir, seq_len=args.seq_len,
        max_positions=args.max_positions, workers=args.workers, shards=args.shards,
        eval_fraction=args.eval_fraction, seed=args.seed, overwrite=args.overwrite,
        max_line_chars=args.max_line_chars))
    splits = ", ".join(f"{s}: {v['examples']} examples" for s, v in manifest["splits"].items())
    print(f"{args.out}: {splits}; {manifest['tokens_per_second']:,} tokens/s")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args_only, overrides = _split_overrides(argv)
    args = _parser().parse_args(args_only)
    try:
        if overrides and not hasattr(args, "config"):
            raise ConfigError(f"{args.command} takes no config, so {overrides[0]} has nothing to set")
        if args.command == "tokenizer":
            _tokenizer_command(args)
            return 0
        if args.command == "build-data":
            _build_data_command(args)
            return 0
        if args.command == "bench-data":
            if args.fake_devices > 1 and "jax" not in sys.modules:
                os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform"
                                           f"_device_count={args.fake_devices}")
            from electra_jax.data import bench as data_bench

            data_bench.run(args.results)
            return 0
        config = load_config(args.config, overrides)
        if args.command == "pretrain":
            from electra_jax.train import pretrain

            if args.data:
                config.data.path = args.data
            result = pretrain(config, args.workdir)
            print(f"step {result['step']}: " + ", ".join(f"{k} {v:.4g}" for k, v in result["eval"].items()))
            return 0
        if args.command == "bench":
            from electra_jax import bench

            if args.steps < 1 or args.warmup < 0:
                raise ConfigError("--steps must be >= 1 and --warmup >= 0")
            result = bench.run(config, steps=args.steps, warmup=args.warmup, peak=args.peak_tflops)
            print(bench.report(result))
            bench.append_result(result, args.results)
            print(f"  appended to {args.results}")
    except (ConfigError, DataError, TokenizerError, TrainingError) as e:
        print(f"electra-jax: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
