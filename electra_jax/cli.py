"""The `electra-jax` command. Every error a user can cause ends in one clear line and a non-zero exit.

Paths are resolved here, once, where they enter: local ones become absolute (`~` expanded), remote ones
(gs://) stay as they are, so the library never depends on the working directory.
"""

from __future__ import annotations

import argparse
import os
import sys

# Light modules only: JAX is imported after main() has set the environment (and never for --help).
from electra_jax.config import ConfigError, load_config, load_workdir_config
from electra_jax.errors import UserError
from electra_jax.fs import exists, resolve, split_step, writable_dir
from electra_jax import xla_flags
from electra_jax.plan import TARGET_HELP

# The demo's detect sentence: Genesis 1:3 with one word swapped ("light" -> "bread"), so there is a
# replaced token to find.
DEMO_SENTENCE = "And God said, Let there be light: and there was bread."

# Flags that name local-or-remote paths, resolved once (see the module docstring).
PATH_FLAGS = ("workdir", "data", "out", "model", "train", "dev", "tokenizer", "discriminator",
              "generator", "tfds_data_dir", "checkpoint_dir", "results", "markdown")


def _resolve_paths(args: argparse.Namespace) -> None:
    for name in PATH_FLAGS:
        value = getattr(args, name, None)
        if isinstance(value, str) and value != "-":  # "-": stdin / stdout (predict)
            setattr(args, name, resolve(value))
    if isinstance(getattr(args, "input", None), str) and args.input != "-":  # predict's one input
        args.input = resolve(args.input)
    if isinstance(getattr(args, "profile", None), str):  # bench --profile DIR (pretrain's is a switch)
        args.profile = resolve(args.profile)
    for name in ("input", "results_files"):
        if isinstance(getattr(args, name, None), list):
            setattr(args, name, [resolve(p) for p in getattr(args, name)])
    if isinstance(getattr(args, "init", None), str):  # WORKDIR[:step]
        path, step = split_step(args.init)
        args.init = resolve(path) + (f":{step}" if step is not None else "")


def _resolve_config_paths(config) -> None:
    """Paths set with --config.x=... or in a config file, resolved like the flags."""
    config.data.path = resolve(config.data.path) if config.data.path else config.data.path
    if "task" in config:
        for name in ("train", "dev", "tfds_data_dir"):
            config.task[name] = resolve(config.task[name]) if config.task[name] else config.task[name]


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    overrides = [a for a in argv if a.startswith("--config.")]
    return [a for a in argv if not a.startswith("--config.")], overrides


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each flag's help (unless the help already says its default); descriptions and
    epilogs keep their line breaks."""

    def _get_help_string(self, action):
        return action.help if "default" in (action.help or "") else super()._get_help_string(action)


OVERRIDES_HELP = ("Any config field can be set after the flags: --config.<field>=<value>, e.g. "
                  "--config.batch_size=32 --config.model.dtype=float32 --config.optim.learning_rate=1e-3.")
CONFIG_HELP = ("a preset (tiny, small, small_plus, base, large; finetune/<size>) or a config file "
               "(Python, defining get_config())")


def _distributed_flags() -> argparse.ArgumentParser:
    """Flags joining the processes of a multi-host job (not needed on Cloud TPU or under Slurm)."""
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("multi-host (automatic on Cloud TPU VMs and under Slurm)")
    group.add_argument("--coordinator", default=None, help="HOST:PORT of process 0")
    group.add_argument("--num-processes", type=int, default=None, help="how many processes join")
    group.add_argument("--process-id", type=int, default=None, help="this process's index, 0..N-1")
    group.add_argument("--distributed-timeout", type=int, default=300, help="seconds to wait for all")
    group.add_argument("--cpu-collectives", action="store_true", help="gloo for CPU-only processes (tests)")
    return flags


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("electra-jax")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="electra-jax", formatter_class=_HelpFormatter,
        description="ELECTRA (replaced-token detection) pretraining, fine-tuning and Hugging Face export "
        "in JAX. Paths may be relative, absolute, ~/... or gs://.", epilog=OVERRIDES_HELP)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help, parents=(), config_overrides=False):
        return sub.add_parser(name, help=help, description=help, parents=list(parents),
                              formatter_class=_HelpFormatter,
                              epilog=OVERRIDES_HELP if config_overrides else None)

    demo = command("demo", "sample corpus -> examples -> pretrain tiny -> export -> detect, in WORKDIR",
                   config_overrides=True)
    demo.add_argument("--config", default="demo", help=CONFIG_HELP + " (default: demo, the tiny preset sampled at temperature 2)")
    demo.add_argument("--workdir", default="demo", help="data/, run/ and export/ go here; rerunning "
                      "resumes")

    pre = command("pretrain", "pretrain (resumes from the latest checkpoint in --workdir)",
                  [_distributed_flags()], config_overrides=True)
    pre.add_argument("--config", required=True, help=CONFIG_HELP)
    pre.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl and config.json go here")
    pre.add_argument("--data", default=None, help="a build-data directory (sets config.data.path)")
    pre.add_argument("--profile", action="store_true",
                     help="trace 5 steps after warm-up with jax.profiler (view in TensorBoard)")

    export = command("export", "write Hugging Face directories from a pretrain or fine-tuning workdir")
    export.add_argument("--workdir", required=True, help="a pretrain (or import, or finetune) workdir")
    export.add_argument("--step", type=int, default=None, help="which checkpoint (default: the latest)")
    export.add_argument("--out", required=True, help="OUT/discriminator and OUT/generator are written")
    export.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="weights' dtype in model.safetensors")
    export.add_argument("--seed", type=int, default=None,
                        help="fine-tuning workdirs: which seed's run (default: the best)")

    detect = command("detect", "show which tokens a discriminator calls replaced: p(replaced) per token")
    detect.add_argument("--model", required=True,
                        help="an exported discriminator directory, or a pretrain WORKDIR[:step]")
    detect.add_argument("text", nargs="+", help="the text to score")
    detect.add_argument("--json", action="store_true", help="print JSON instead of a table (unrounded)")
    detect.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype (float32: the probabilities transformers gives)")

    ft = command("finetune", "fine-tune a pretrained discriminator on a task", [_distributed_flags()],
                 config_overrides=True)
    ft.add_argument("--init", required=True,
                    help="an HF ELECTRA discriminator directory, or a pretrain WORKDIR[:step]")
    ft.add_argument("--task", required=True, help="cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, squad1, "
                    "squad2, or classification / regression / tagging / qa with --train and --dev files")
    ft.add_argument("--workdir", required=True, help="checkpoints, results.json and config.json go here")
    ft.add_argument("--config", default=None,
                    help="default: the finetune/<size> preset for the --init model's hidden size")
    ft.add_argument("--train", default=None,
                    help="training file (.csv/.tsv/.jsonl; CoNLL for tagging; SQuAD-format .json for qa)")
    ft.add_argument("--dev", default=None, help="evaluation file, same format")
    ft.add_argument("--seeds", type=int, default=1, help="runs with seeds seed..seed+K-1; the median is "
                    "reported, as the paper")
    ft.add_argument("--random-init", action="store_true",
                    help="the --init model's shape and tokenizer but random weights (a baseline)")
    ft.add_argument("--tfds-data-dir", default=None, help="where GLUE / SQuAD are prepared for TFDS")
    ft.add_argument("--download", action="store_true", help="let TFDS download GLUE / SQuAD (needs network)")
    ft.add_argument("--write-test", action="store_true",
                    help="GLUE: then write the test-set submission files to WORKDIR/test/ (config.write_test)")

    pr = command("predict", "run a fine-tuned model (a finetune workdir or its export) on new data")
    pr.add_argument("--model", required=True, help="a `finetune` --workdir (its best seed) or its export")
    pr.add_argument("--input", required=True,
                    help="the task's file kind (CSV/TSV/JSONL, CoNLL, SQuAD JSON; the gold column optional), "
                         "or plain lines (.txt, or - for stdin: a pair's texts tab-separated)")
    pr.add_argument("--out", required=True, help="predictions file (.jsonl or .csv; QA: predictions.json), - for stdout")
    pr.add_argument("--format", choices=("jsonl", "csv"), default=None, help="default: from --out's extension")
    pr.add_argument("--seed", type=int, default=None, help="a workdir's seed (default: its best)")
    pr.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                    help="compute dtype (default: the run's eval_dtype, float32)")

    imp = command("import", "HF discriminator + generator -> a step-0 checkpoint to pretrain on (or export)",
                  config_overrides=True)
    imp.add_argument("--discriminator", required=True, help="an HF ElectraForPreTraining directory")
    imp.add_argument("--generator", required=True, help="an HF ElectraForMaskedLM directory")
    imp.add_argument("--workdir", required=True, help="an empty directory; `pretrain` continues from it")
    imp.add_argument("--config", default="base",
                     help="training settings to continue with (model fields come from the HF configs)")

    tok = command("tokenizer", "train an uncased WordPiece vocabulary")
    tok.add_argument("--input", nargs="+", default=None,
                     help="text files or globs (.gz ok); default: the shipped sample corpus")
    tok.add_argument("--vocab-size", type=int, default=30522, help="vocabulary size (tiny preset: 2048)")
    tok.add_argument("--min-frequency", type=int, default=2, help="rarer pieces are not kept")
    tok.add_argument("--out", required=True, help="directory to write (AutoTokenizer loads it)")

    data = command("build-data", "text -> packed pretraining examples (TFRecord shards)")
    src = data.add_mutually_exclusive_group()
    src.add_argument("--input", nargs="+",
                     help="text files or globs (.gz ok): blank lines end documents; .jsonl (.jsonl.gz, "
                     ".ndjson): one document per row, its --text-key field; default: the sample corpus")
    src.add_argument("--tfds", help="a TensorFlow Datasets text dataset, NAME[:SPLIT]")
    data.add_argument("--text-key", default="text", help="the JSON-lines field or TFDS feature holding the text")
    data.add_argument("--tfds-data-dir", default=None, help="where TFDS data is prepared (or gs://)")
    data.add_argument("--tokenizer", default=None,
                      help="tokenizer directory or vocab.txt; default: the sample corpus's tokenizer")
    data.add_argument("--seq-len", type=int, default=128, help="tokens per example (tiny preset: 64)")
    data.add_argument("--max-positions", type=int, default=512, help="the model's position table size")
    data.add_argument("--out", required=True, help="directory for the shards and manifest.json")
    data.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)),
                      help="tokenizing processes")
    data.add_argument("--shards", type=int, default=16, help="training files (at least one per host)")
    data.add_argument("--eval-fraction", type=float, default=0.005,
                      help="share of documents held out for evaluation (0: none)")
    data.add_argument("--seed", type=int, default=0, help="packing and eval-split randomness")
    data.add_argument("--overwrite", action="store_true", help="replace a different build in --out")
    data.add_argument("--max-line-chars", type=int, default=100_000,
                      help="longer lines are split at spaces into several units")
    data.add_argument("--packing", choices=("fill", "original"), default="fill",
                      help="fill (default): every token kept, a line that does not fit continues in the "
                      "next example; original: google-research/electra's, which truncates it and drops "
                      "the rest (44%% of a one-document-per-line corpus at --seq-len 128)")

    plot = command("plot", "a PNG of a run's loss and accuracy curves")
    plot.add_argument("workdir", help="a pretrain workdir (reads its metrics.jsonl)")
    plot.add_argument("--out", default=None, help="default: WORKDIR/curves.png")

    bench = command("bench", "time the jitted train step on synthetic batches (--config), or run a "
                    "benchmark suite against the PyTorch peer (--suite, --out)", config_overrides=True)
    bench.add_argument("--config", default=None, help=CONFIG_HELP)
    bench.add_argument("--suite", default=None, choices=("smoke", "cpu", "gpu", "memory"),
                       help="ours vs transformers' PyTorch ELECTRA, eager and compiled, and the "
                       "optimisation variants; writes --out (JSON)")
    bench.add_argument("--out", default=None, help="the suite's JSON results file")
    bench.add_argument("--cases", nargs="*", default=None, help="only these suite cases, e.g. small@128")
    bench.add_argument("--no-peers", action="store_true", help="suite without the PyTorch peer")
    bench.add_argument("--no-variants", action="store_true", help="suite without optimisation variants")
    bench.add_argument("--only", choices=("ours", "peers"), default=None,
                       help="suite: time only our step or only the peer (on a CPU the suite runs each "
                       "in its own process this way)")
    bench.add_argument("--steps", type=int, default=None, help="timed steps after warm-up (default 10; "
                       "smoke suite 2; 0: compile only, for compile time and XLA's memory estimate)")
    bench.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    bench.add_argument("--budget-s", type=float, default=None,
                       help="suite: start no measurement after this many seconds (the rest are listed as "
                            "skipped), so a run on a lent accelerator ends inside its window")
    bench.add_argument("--profile", default=None, metavar="DIR",
                       help="--config: also trace --steps steps into DIR (jax.profiler) and print where "
                       "the step's time goes, by category, part of the model and op")
    bench.add_argument("--results", default="bench_results.jsonl",
                       help="JSON-lines file the result is appended to")
    bench.add_argument("--peak-tflops", type=float, default=None,
                       help="per-device peak for MFU where the device kind is not in the table")
    bench.add_argument("--checkpoint-dir", default=None,
                       help="also time an async orbax save of the trained state into this directory")

    plan = command("plan", "will this run fit a TPU slice or GPU node, and how does it shard? Compiles the "
                   "real train step for the target on this machine (no accelerator needed) and reports per-chip "
                   "memory, the mesh, collectives, compile time and a roofline bound; exit 0 if it fits, 1 if not",
                   config_overrides=True)
    plan.add_argument("--config", required=True, help=CONFIG_HELP)
    plan.add_argument("--target", required=True, help="what to compile for: " + TARGET_HELP)
    plan.add_argument("--slices", type=int, default=1, help="TPU slices joined over the data-centre network "
                      "(sets config.mesh.dcn_data unless given)")
    plan.add_argument("--nodes", type=int, default=None, help="GPU nodes (the same as --slices)")
    plan.add_argument("--largest-batch", action="store_true",
                      help="also search the largest global batch that fits (a few more compiles)")
    plan.add_argument("--no-suggest", action="store_true",
                      help="when it does not fit, do not compile the changes that would lower memory")
    plan.add_argument("--allow-replicated", action="store_true",
                      help="accept parameters whose sharding rule does not divide them (they are replicated)")
    plan.add_argument("--results", default=None, help="append the plan as a JSON line to this file")

    table = command("bench-table", "suite results (JSON) -> tables in BENCHMARKS.md")
    table.add_argument("results_files", nargs="+", metavar="results", help="files written by bench --suite")
    table.add_argument("--markdown", default="BENCHMARKS.md",
                       help="rewritten between its bench-table markers (prose around them is kept)")

    exp = command("experiment", "run a recorded experiment: `parity` trains electra-jax and an independent "
                  "PyTorch ELECTRA (transformers' classes, the original's Adam) side by side, 3 seeds, and "
                  "compares the loss curves", config_overrides=True)
    exp.add_argument("name", choices=("parity", "pretraining-helps", "sources"),
                     help="which experiment (`sources` downloads and converts pretraining-helps' corpus and tasks)")
    exp.add_argument("--config", default=None, help=CONFIG_HELP + " (its num_train_steps is the length; "
                     "default: tiny for parity, mini for pretraining-helps)")
    exp.add_argument("--out", default=None, help="results and data go here (default: experiments/NAME)")
    exp.add_argument("--seeds", type=int, default=3, help="runs per implementation")
    exp.add_argument("--first-seed", type=int, default=0, help="seeds first..first+K-1 (extend an earlier run)")
    exp.add_argument("--window", type=int, default=100, help="steps per compared window")
    exp.add_argument("--corpus", nargs="*", default=None, metavar="FILE",
                     help="pretraining-helps: text files to pretrain on (default: the sample corpus)")
    exp.add_argument("--task", action="append", default=None, metavar="NAME=TRAIN,TEST",
                     help="pretraining-helps: a labelled task, CSV files with columns text,label (repeat)")
    exp.add_argument("--steps", type=int, default=None, help="pretraining-helps: ELECTRA pretraining steps "
                     "(the MLM baseline gets the same FLOPs)")
    exp.add_argument("--budgets", default="100,1000,all", help="pretraining-helps: training labels per task")
    exp.add_argument("--finetune-config", default="finetune/small", help="pretraining-helps: fine-tuning preset")
    exp.add_argument("--finetune-max-len", type=int, default=64,
                     help="pretraining-helps: fine-tuning sequence length (64: the grid fits an afternoon on 2 cores)")
    exp.add_argument("--min-steps", type=int, default=500,
                     help="pretraining-helps: fine-tuning steps at least (more epochs for small budgets)")
    exp.add_argument("--choose", action="append", default=None, metavar="FIELD=VALUE,VALUE",
                     help="pretraining-helps: a fine-tuning config field to choose per initialisation on a "
                          "dev split of the training data (repeat; default: pooling=cls,mean and "
                          "optim.learning_rate=3e-4,1e-3; 'none': nothing)")
    exp.add_argument("--dev-size", type=int, default=1000,
                     help="pretraining-helps: training rows held out per task to choose on (at most a fifth)")
    exp.add_argument("--dev-budget", type=int, default=1000,
                     help="pretraining-helps: labels each setting is fine-tuned on when choosing")
    exp.add_argument("--peer-mlm", choices=("per-slot", "per-position"), default="per-slot",
                     help="the PyTorch side's MLM mean: over the masking slots, a position drawn twice "
                          "counted twice (the original's, and ours), or over distinct positions (the "
                          "transformers classes' labels= path)")

    bench_data = command("bench-data", "time the example builder and the tf.data reader")
    bench_data.add_argument("--results", default="bench_results.jsonl",
                            help="JSON-lines file the result is appended to")
    bench_data.add_argument("--fake-devices", type=int, default=8,
                            help="CPU devices to lay batches over (sets XLA_FLAGS before jax starts)")
    return parser


def _tokenizer_command(args) -> None:
    from electra_jax.data import SAMPLE_CORPUS
    from electra_jax.data.builder import DataError, ReadStats, expand_inputs, iter_file_documents
    from electra_jax.data.tokenizer import save_tokenizer, train_tokenizer

    if args.vocab_size < 16:
        raise ConfigError("--vocab-size must be at least 16")
    files = expand_inputs(args.input) if args.input else [SAMPLE_CORPUS]
    writable_dir(args.out, keep=False)  # before training, not after
    stats = ReadStats()
    lines = (line for doc in iter_file_documents(files, stats, 100_000) for line in doc)
    tok = train_tokenizer(lines, args.vocab_size, args.min_frequency)
    if not stats.lines:
        raise DataError(f"{', '.join(args.input or files)}: no non-empty lines to learn a vocabulary from")
    save_tokenizer(tok, args.out)
    print(f"wrote a {tok.get_vocab_size()}-token vocabulary to {args.out}")


def _build_data_command(args) -> None:
    from electra_jax.data import SAMPLE_CORPUS, SAMPLE_TOKENIZER
    from electra_jax.data.builder import BuildArgs, build, summary

    inputs = args.input or ([] if args.tfds else [SAMPLE_CORPUS])
    manifest = build(BuildArgs(
        tokenizer=args.tokenizer or SAMPLE_TOKENIZER, out=args.out, inputs=inputs, tfds=args.tfds,
        text_key=args.text_key, tfds_data_dir=args.tfds_data_dir, seq_len=args.seq_len,
        max_positions=args.max_positions, workers=args.workers, shards=args.shards,
        eval_fraction=args.eval_fraction, seed=args.seed, overwrite=args.overwrite,
        max_line_chars=args.max_line_chars, packing=args.packing))
    print(f"{args.out}: {summary(manifest)}")


def _demo_command(args, config) -> None:
    import time

    from electra_jax.data import SAMPLE_CORPUS, SAMPLE_TOKENIZER
    from electra_jax.data.builder import BuildArgs, build
    from electra_jax.pretrain import pretrain

    start = time.perf_counter()
    data = os.path.join(args.workdir, "data")
    print(f"1/4 examples from the sample corpus -> {data}")
    build(BuildArgs(tokenizer=SAMPLE_TOKENIZER, out=data, inputs=[SAMPLE_CORPUS], seq_len=config.data.seq_len,
                    shards=4, eval_fraction=0.02, workers=2))
    config.data.path = data
    run = os.path.join(args.workdir, "run")
    print(f"2/4 pretraining {args.config} -> {run} (rerunning resumes; finished runs just export)")
    result = pretrain(config, run)
    print("    eval: " + ", ".join(f"{k} {v:.3f}" for k, v in result["eval"].items()))
    out = os.path.join(args.workdir, "export")
    print(f"3/4 exporting to {out}")
    _export_command(argparse.Namespace(workdir=run, step=None, out=out, dtype="float32", seed=None))
    print(f"4/4 electra-jax detect --model {os.path.join(out, 'discriminator')} \"{DEMO_SENTENCE}\"\n"
          "    (\"bread\" replaces \"light\"; a tiny model trained for minutes is a weak detector)")
    _detect_command(argparse.Namespace(model=os.path.join(out, "discriminator"), text=[DEMO_SENTENCE],
                                       json=False, dtype="float32"))
    print(f"done in {time.perf_counter() - start:.0f} s")


def _export_command(args) -> None:
    saved = load_workdir_config(args.workdir)  # path and output errors before the heavy imports
    writable_dir(args.out, keep=False)

    import json

    import ml_dtypes
    import numpy as np

    from electra_jax.config import model_spec
    from electra_jax.hf import export_pretrained
    from electra_jax.pretrain import restore_params, workdir_tokenizer
    from electra_jax.writers import read_metrics

    dtype = np.float32 if args.dtype == "float32" else ml_dtypes.bfloat16
    if "task" in saved:  # a fine-tuning run: one classifier directory
        from electra_jax.finetune.run import export_finetuned

        print(f"exported {export_finetuned(args.workdir, args.out, args.seed, dtype)}")
        return
    config, step, params = restore_params(args.workdir, args.step)
    tokenizer = workdir_tokenizer(args.workdir, config, step)
    evals = [r for r in read_metrics(args.workdir) if r.get("split") == "eval" and r["step"] <= step]
    if config.data.path:
        from electra_jax.data.reader import open_build

        manifest = open_build(config.data.path)
        data = (f"Data: `{config.data.path}` ({manifest['splits']['train']['tokens']:,} tokens per epoch, "
                f"seq_len {config.data.seq_len}).")
    else:
        data = "Data: none since import (the imported pair's own pretraining)."
    card = "\n".join([
        f"Pretrained with electra-jax for {step} steps ("
        + ("masked language modelling, the BERT baseline)." if config.objective.get("name") == "mlm"
           else "replaced-token detection, fakes drawn uniformly)." if config.objective.get("uniform_generator")
           else "replaced-token detection)."),
        data,
        f"Model: {config.model.num_layers} layers, hidden {config.model.hidden_size}, embeddings "
        f"{config.model.embedding_size}, generator fraction {config.model.generator_hidden_fraction}.",
        f"Final eval: {json.dumps(evals[-1]) if evals else 'none'}",
    ])
    written = export_pretrained(params, model_spec(config), args.out, tokenizer, card, dtype,
                                config.tokens.pad_id)
    print(f"exported step {step}: {', '.join(written.values())}")


def _finetune_config_path(args) -> str:
    """The finetune/<size> preset for the --init model's hidden size, unless --config names one."""
    import json

    if args.config:
        return args.config
    workdir, _ = split_step(args.init)
    path = os.path.join(workdir, "config.json")
    hidden = None
    if os.path.isfile(path):
        with open(path) as f:
            c = json.load(f)
        hidden = c.get("hidden_size") or c.get("model", {}).get("hidden_size")
    size = {256: "small", 768: "base", 1024: "large"}.get(hidden)
    size = size or ("tiny" if hidden and hidden < 256 else "base")
    print(f"using the finetune/{size} preset for this model (hidden size {hidden}); --config chooses another")
    return f"finetune/{size}"


def _must_exist(path: str, flag: str) -> None:
    """A path a command reads, checked before the heavy imports (an error in a blink, not seconds)."""
    if not exists(split_step(path)[0]):
        raise ConfigError(f"{flag} {split_step(path)[0]}: no such file or directory")


def _finetune_command(args, overrides) -> None:
    _must_exist(args.init, "--init")
    for flag, path in (("--train", args.train), ("--dev", args.dev)):
        if path:
            _must_exist(path, flag)
    config = load_config(_finetune_config_path(args), overrides)
    from electra_jax.finetune.run import finetune

    _resolve_config_paths(config)
    config.task.name = args.task
    if args.train:
        config.task.train = args.train
    if args.dev:
        config.task.dev = args.dev
    if args.tfds_data_dir:
        config.task.tfds_data_dir = args.tfds_data_dir
    config.task.download = config.task.download or args.download
    if args.seeds < 1:
        raise ConfigError("--seeds must be >= 1")
    config.write_test = config.write_test or args.write_test
    if config.write_test:
        from electra_jax.finetune.tasks import task_spec

        if not task_spec(config.task.name).submissions:  # before hours of fine-tuning, not after
            raise ConfigError(f"--write-test: task {config.task.name!r} has no GLUE test split; `electra-jax "
                              "predict` writes predictions for any file (SQuAD's test set is hidden)")
    results = finetune(config, args.init, args.workdir, seeds=args.seeds, random_init=args.random_init)
    if results.get("interrupted"):
        return  # saved; the message said how to resume
    if config.write_test:
        from electra_jax.finetune.predict import write_glue_test

        write_glue_test(args.workdir, data_dir=config.task.tfds_data_dir or None, download=config.task.download)
    for run in results["runs"]:
        print(f"seed {run['seed']} ({results['model_selection']} epoch, {run['epoch']}): " +
              ", ".join(f"{k} {v:.4f}" for k, v in run.items() if "/" in k))
    print("median: " + ", ".join(f"{k} {v:.4f}" for k, v in results["median"].items()) +
          f"  -> {os.path.join(args.workdir, 'results.json')}")
    if "qa_na_threshold" in results:
        print(f"exact, f1, HasAns_* and NoAns_* answer \"\" where the no-answer score > {results['qa_na_threshold']:g} "
              "(task.qa_na_threshold, the original's); best_* use the threshold best on this dev set (optimistic)")


def _import_command(args, config) -> None:
    from electra_jax.pretrain import import_hf

    config, overrides = import_hf(args.discriminator, args.generator, args.workdir, config)
    print(f"wrote step 0 to {args.workdir}; export it with\n  electra-jax export --workdir {args.workdir} "
          f"--out OUT\nor continue pretraining with\n  electra-jax pretrain --config {args.config} --workdir "
          f"{args.workdir} --data DATA " + " ".join(overrides))


def _detect_command(args) -> None:
    _must_exist(args.model, "--model")
    import json

    import jax
    import numpy as np

    from electra_jax.config import default_config, model_spec
    from electra_jax.data.tokenizer import load_tokenizer
    from electra_jax.model import Electra
    from electra_jax.pretrain import load_discriminator

    # No torch: the weights (an export, or a workdir's checkpoint) run in our own model.
    fields, _, params, tokenizer = load_discriminator(args.model)
    config = default_config()
    config.model.update(fields)
    config.model.dtype = args.dtype  # not the presets' bfloat16: scoring should give transformers' numbers
    tok = load_tokenizer(tokenizer)
    enc_text = tok.encode(" ".join(args.text))
    positions = config.model.max_position_embeddings
    if len(enc_text.ids) > positions:  # past the position table JAX would clamp, not fail: a wrong score
        raise ConfigError(f"the text is {len(enc_text.ids)} tokens with [CLS] and [SEP]; {args.model} reads at "
                          f"most {positions}: shorten it")
    ids = np.asarray([enc_text.ids], np.int32)
    logits = Electra(model_spec(config)).apply(  # deterministic: dropout is off
        {"params": params}, ids, np.zeros_like(ids), np.ones_like(ids), method=Electra.discriminator_logits)
    probs = np.asarray(jax.nn.sigmoid(logits))[0]
    rows = [{"token": t, "p_replaced": float(p)} for t, p in zip(enc_text.tokens, probs)]
    if args.json:
        print(json.dumps(rows))
    else:
        print(f"{'token':>16}  p(replaced)")
        for r in rows:
            print(f"{r['token']:>16}  {r['p_replaced']:.3f}  {'#' * int(round(20 * r['p_replaced']))}")


def _plot_command(args) -> None:
    from electra_jax.writers import plot

    try:
        print(f"wrote {plot(args.workdir, args.out)}")
    except (FileNotFoundError, ImportError) as e:
        raise ConfigError(str(e)) from None


def _bench_data_command(args) -> None:
    if args.fake_devices > 1:  # read when JAX first initialises its backends, which has not happened yet
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.fake_devices}")
    from electra_jax.data import bench as data_bench

    data_bench.run(args.results)


def _pretrain_command(args, config) -> None:
    from electra_jax.data.reader import open_build

    if args.data:
        config.data.path = args.data
    open_build(config.data.path, seq_len=config.data.seq_len)  # data errors before the heavy imports
    from electra_jax.pretrain import pretrain

    if args.profile and not config.train.profile_steps:
        config.train.profile_steps = 5
    result = pretrain(config, args.workdir)
    evaluated = ", ".join(f"{k} {v:.4g}" for k, v in result["eval"].items())
    print(f"stopped at step {result['step']} of {config.num_train_steps}" +
          (f"; eval: {evaluated}" if evaluated else ""))


def _bench_suite_command(args) -> None:
    from electra_jax.bench.suite import run_suite

    if not args.out or args.config or args.profile:
        raise ConfigError("bench --suite needs --out FILE.json and no --config or --profile (the suite "
                          "has its own configs; profile one with bench --config F --profile DIR)")
    run_suite(args.suite, args.out, args.steps, args.warmup, args.cases, peers=not args.no_peers,
              variants=not args.no_variants, command="electra-jax " + " ".join(sys.argv[1:]),
              only=args.only, budget_s=args.budget_s)


def _bench_table_command(args) -> None:
    from electra_jax.bench.table import load, update_markdown

    missing = [p for p in args.results_files if not os.path.isfile(p)]
    if missing:
        raise ConfigError(f"no such results file: {', '.join(missing)}")
    update_markdown(args.markdown, load(args.results_files))
    print(f"wrote {len(args.results_files)} result file(s) into {args.markdown}")


def _experiment_command(args, config) -> None:
    import importlib.util

    from electra_jax.experiments import parity, pretraining_helps

    needs = ("torch", "transformers", "matplotlib") if args.name == "parity" else ("matplotlib",)
    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"experiment {args.name} needs {', '.join(missing)}: pip install -c constraints.txt "
                          "-e '.[test]' (torch==2.13.0 is a CPU build)")
    out = args.out or resolve(os.path.join("experiments", args.name))
    if args.name == "sources":
        from electra_jax.experiments.sources import prepare

        got = prepare(out)
        tasks = " ".join(f"--task {name}={train},{test}" for name, (train, test) in got["tasks"].items())
        print(f"next: electra-jax experiment pretraining-helps --corpus {' '.join(got['corpus'])} {tasks}")
        return
    if args.name == "pretraining-helps":
        from electra_jax.data import SAMPLE_CORPUS

        if args.seeds < 1 or not args.task:
            raise ConfigError("experiment pretraining-helps needs --task NAME=TRAIN.csv,TEST.csv (one or more) "
                              "and --seeds >= 1")
        tasks = [pretraining_helps.parse_task(t) for t in args.task]
        tasks = [pretraining_helps.Task(t.name, resolve(t.train), resolve(t.test)) for t in tasks]
        try:
            budgets = tuple(None if b == "all" else int(b) for b in args.budgets.split(","))
        except ValueError:
            raise ConfigError(f"--budgets {args.budgets!r}: numbers or 'all', comma-separated") from None
        if args.dev_size < 1 or args.dev_budget < 1 or args.min_steps < 1:
            raise ConfigError("--dev-size, --dev-budget and --min-steps must be >= 1")
        choose = None
        if args.choose == ["none"]:
            choose = {}
        elif args.choose:
            choose = pretraining_helps.parse_choices(args.choose)
        corpus = [resolve(p) for p in args.corpus] if args.corpus else [SAMPLE_CORPUS]
        pretraining_helps.run(config, out, corpus, tasks, steps=args.steps, budgets=budgets, seeds=args.seeds,
                              finetune_config=args.finetune_config, min_steps=args.min_steps,
                              finetune_overrides=(f"--config.task.max_len={args.finetune_max_len}",),
                              probe_max_len=args.finetune_max_len, choose=choose, dev_size=args.dev_size, dev_budget=args.dev_budget)
        return
    if args.seeds < 2 or args.window < 1:
        raise ConfigError("experiment needs --seeds >= 2 (the noise is the spread over seeds) and --window >= 1")
    parity.run(config, out, seeds=args.seeds,
               window=args.window, first_seed=args.first_seed, peer_mlm=args.peer_mlm)


def _plan_command(args, config) -> None:
    from electra_jax import plan as plan_lib

    slices = args.nodes if args.nodes is not None else args.slices
    target = plan_lib.parse_target(args.target, slices)
    if slices > 1 and int(config.mesh.get("dcn_data", 1)) == 1:
        config.mesh.dcn_data = slices
    result = plan_lib.make_plan(config, target, search_batch=args.largest_batch, suggest=not args.no_suggest,
                                allow_replicated=args.allow_replicated)
    print(plan_lib.report(result))
    if args.results:
        plan_lib.append_record(result, args.results)
        print(f"  appended to {args.results}")
    if not result.main.fits:
        raise SystemExit(1)


def _aot_environment(argv: list[str]) -> None:
    """`plan` compiles for TPUs on a machine without one: JAX itself stays on the CPU, several processes
    may load libtpu, and libtpu is told the slice it compiles for instead of probing for hardware (which
    prints errors about accelerator type and worker hostnames)."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    target = next((a.split("=", 1)[1] for a in argv if a.startswith("--target=")), None)
    if target is None and "--target" in argv[:-1]:
        target = argv[argv.index("--target") + 1]
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", (target or "v5litepod-8").replace("v5e-", "v5litepod-"))
    if os.environ.get("ELECTRA_JAX_XLA_FLAGS", "1") != "0":  # the flags a run will compile with
        xla_flags.apply("gpu" if (target or "").lower().startswith("h") else "tpu")


def _accelerator_flags() -> None:
    """The TPU or GPU compiler flags (electra_jax.xla_flags) for a run on one, before JAX starts:
    TPU where JAX will use libtpu, GPU where JAX_PLATFORMS names cuda (as launch/gpu.sh and
    launch/slurm.sbatch set it). ELECTRA_JAX_XLA_FLAGS=0 leaves the environment alone."""
    import importlib.util

    if os.environ.get("ELECTRA_JAX_XLA_FLAGS", "1") == "0":
        return
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if "cuda" in platforms or "gpu" in platforms:
        xla_flags.apply("gpu")
    elif importlib.util.find_spec("libtpu") is not None and (not platforms or "tpu" in platforms):
        xla_flags.apply("tpu")


def _no_tpu_probe() -> None:
    """With libtpu installed (the `tpu` extra, for `plan`) on a machine without a TPU, JAX would start
    the TPU backend anyway, print libtpu's initialisation errors and wait for them: keep it on the CPU
    (and the GPUs, on a machine with some) unless the user chose JAX_PLATFORMS."""
    import glob
    import importlib.util

    if "JAX_PLATFORMS" in os.environ or importlib.util.find_spec("libtpu") is None:
        return
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):  # a TPU VM's chips
        return
    os.environ["JAX_PLATFORMS"] = "cuda,cpu" if glob.glob("/dev/nvidia[0-9]*") else "cpu"


def _bench_command(args, config) -> None:
    from electra_jax.bench import step as bench

    args.steps = 10 if args.steps is None else args.steps
    if args.steps < 0 or args.warmup < 0:
        raise ConfigError("--steps and --warmup must be >= 0 (--steps 0: compile only)")
    if args.profile and args.steps == 0:
        raise ConfigError("--profile traces steps: give --steps >= 1")
    result = bench.run(config, steps=args.steps, warmup=args.warmup, peak=args.peak_tflops,
                       checkpoint_dir=args.checkpoint_dir, profile_dir=args.profile)
    print(bench.report(result))
    bench.append_result(result, args.results)
    print(f"  appended to {args.results}")


def _predict_command(args) -> None:
    from electra_jax.finetune.predict import run_predict

    if args.input != "-":
        _must_exist(args.input, "--input")
    result = run_predict(args.model, args.input, args.out, seed=args.seed, fmt=args.format, dtype=args.dtype or "")
    scores = ", ".join(f"{k} {v:.4f}" for k, v in result["scores"].items())
    print(f"{result['rows']:,} predictions -> {args.out}" + (f" ({scores}: the input had gold labels)" if scores else ""),
          file=sys.stderr)


COMMANDS = {"tokenizer": _tokenizer_command, "build-data": _build_data_command,
            "export": _export_command, "detect": _detect_command, "bench-data": _bench_data_command,
            "predict": _predict_command,
            "bench-table": _bench_table_command,
            "plot": _plot_command}
CONFIG_COMMANDS = {"demo": _demo_command, "pretrain": _pretrain_command, "bench": _bench_command,
                   "import": _import_command, "experiment": _experiment_command, "plan": _plan_command}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # before JAX or TensorFlow load: no INFO lines
    if hasattr(sys.stdout, "reconfigure"):  # a log file (nohup, Slurm) shows each line as it comes
        sys.stdout.reconfigure(line_buffering=True)
    argv = list(sys.argv[1:] if argv is None else argv)
    args_only, overrides = _split_overrides(argv)
    args = _parser().parse_args(args_only)
    _resolve_paths(args)
    if args.command == "plan":
        _aot_environment(args_only)
    else:
        _no_tpu_probe()
        _accelerator_flags()

    try:
        if hasattr(args, "coordinator"):  # before anything touches a JAX backend
            from electra_jax.distributed import initialize

            initialize(args.coordinator, args.num_processes, args.process_id, args.distributed_timeout,
                       args.cpu_collectives)
        if args.command == "finetune":  # its config file depends on the --init model
            _finetune_command(args, overrides)
        elif args.command == "bench" and args.suite:
            if overrides:
                raise ConfigError(f"bench --suite runs fixed cases, so {overrides[0]} has nothing to set")
            _bench_suite_command(args)
        elif args.command == "bench" and not args.config:
            raise ConfigError("bench needs --config FILE (one step benchmark) or --suite NAME --out FILE")
        elif args.command in COMMANDS:
            if overrides:
                raise ConfigError(f"{args.command} takes no config, so {overrides[0]} has nothing to set")
            COMMANDS[args.command](args)
        else:
            if args.command == "experiment" and args.config is None:
                args.config = "tiny" if args.name == "parity" else "mini"
            config = load_config(args.config, overrides)
            _resolve_config_paths(config)
            CONFIG_COMMANDS[args.command](args, config)
    except UserError as e:  # ConfigError, DataError, TaskError, ...: said in one line
        print(f"electra-jax: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # a second Ctrl-C in training, or one anywhere else: stop, no traceback
        what = str(e) or "Ctrl-C"  # "SIGTERM" where a command turns SIGTERM into this (build-data)
        print(f"electra-jax: {args.command} interrupted ({what}); rerun the same command to continue",
              file=sys.stderr)
        return 130 if what == "Ctrl-C" else 143
    return 0


if __name__ == "__main__":
    sys.exit(main())
