"""electra-jax against an independent PyTorch ELECTRA over a whole (tiny) pretraining run.

The tests prove step-by-step equality with dropout off and our masks fed to both (30 steps). This is
the long version: each implementation draws its own masks, samples and dropout from its own random
stream, so single steps differ and only the curves can be compared.

    ours:   electra-jax's sharded train step (Flax model, on-device masking, optax ELECTRA Adam)
    theirs: transformers' ElectraForMaskedLM + ElectraForPreTraining with the objective written in
            PyTorch (`bench.peer.electra_loss_fn`) and google-research/electra's AdamWeightDecay
            written in PyTorch (`bench.peer.original_adam_step`)

Both start from the same initial weights per seed (ours, mapped by the HF mapping: transformers'
classes would otherwise initialise with an untruncated normal, which the original does not) and see
the same real batches in the same order (the sample corpus). For each window of steps the report
gives the mean loss per implementation (median and range over seeds) and whether the difference of
the two means is within the seed-to-seed noise.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

LOSSES = ("loss", "mlm_loss", "disc_loss")


def _batches(examples: dict[str, np.ndarray], batch_size: int, steps: int):
    """The same fixed order for both implementations: one shuffle (seed 0), then wrap around."""
    n = len(examples["input_ids"])
    order = np.random.default_rng(0).permutation(n)
    for step in range(steps):
        rows = order[np.arange(step * batch_size, (step + 1) * batch_size) % n]
        yield {k: v[rows] for k, v in examples.items()}


def _ours(config, examples, steps: int, log) -> tuple[dict, dict]:
    """(initial params as numpy, {loss name: per-step values}) from electra-jax's train step."""
    import jax

    from electra_jax.train import setup

    s = setup(config, jax.devices()[:1])
    init_rng, train_rng = s.rngs()
    state = s.init(init_rng)
    initial = jax.tree.map(np.asarray, state.params)
    curves = {k: [] for k in LOSSES}
    start = time.perf_counter()
    for step, batch in enumerate(_batches(examples, config.batch_size, steps)):
        state, metrics = s.step(state, batch, train_rng)
        for k in LOSSES:
            curves[k].append(metrics[k])
        if (step + 1) % 250 == 0:
            log(f"    ours   step {step + 1}: loss {float(metrics['loss']):.3f} "
                f"({time.perf_counter() - start:.0f} s)")
    return initial, {k: [float(v) for v in vals] for k, vals in curves.items()}


def _theirs(config, initial, examples, steps: int, seed: int, log, peer_mlm: str = "per-slot") -> dict:
    """{loss name: per-step values} from the PyTorch implementation, dropout on, torch's own stream.

    `peer_mlm` "per-slot": the MLM loss is the mean over the masking slots, a position drawn twice
    counted twice, as the original's `get_softmax_output` over `masked_lm_weights` (and ours).
    "per-position": the classes' documented `labels=` path, which counts such a position once. The
    two train measurably differently (MLM +0.04-0.06 nats at step 1,000 for per-slot, same streams)."""
    import torch

    from electra_jax import config as config_lib
    from electra_jax.bench.peer import electra_loss_fn, named_parameters, original_adam_step, torch_electra

    torch.manual_seed(seed)
    spec, objective = config_lib.model_spec(config), config_lib.objective_spec(config)
    gen, disc = torch_electra(spec, params=initial)
    gen.train(), disc.train()
    params, moments = named_parameters(gen, disc), {}
    loss_fn = electra_loss_fn(gen, disc, objective, gather=peer_mlm == "per-slot")
    o = config.optim
    curves = {k: [] for k in LOSSES}
    start = time.perf_counter()
    for step, batch in enumerate(_batches(examples, config.batch_size, steps)):
        t = [torch.as_tensor(batch[k], dtype=torch.long) for k in ("input_ids", "input_mask", "segment_ids")]
        values = loss_fn(*t)
        values[0].backward()
        original_adam_step(params, moments, step, o.learning_rate, steps, o.warmup_steps, b1=o.b1, b2=o.b2,
                           eps=o.eps, weight_decay=o.weight_decay, clip=o.grad_clip_norm)
        for k, v in zip(LOSSES, values):
            curves[k].append(float(v.detach()))
        if (step + 1) % 250 == 0:
            log(f"    theirs step {step + 1}: loss {curves['loss'][-1]:.3f} "
                f"({time.perf_counter() - start:.0f} s)")
    return curves


def compare(runs: dict[str, list[dict]], window: int) -> list[dict]:
    """Per window and loss: each implementation's per-seed window means (median, min, max), the
    difference of the two implementations' means over seeds, and its noise: the standard error of
    that difference from the seed-to-seed spread (sqrt(s_a^2/n_a + s_b^2/n_b))."""
    steps = len(runs["ours"][0]["loss"])
    rows = []
    for start in range(0, steps, window):
        for name in LOSSES:
            row = {"steps": f"{start + 1}-{min(start + window, steps)}", "loss": name}
            means = {}
            for impl, seeds in runs.items():
                m = np.array([np.mean(run[name][start:start + window]) for run in seeds])
                means[impl] = m
                row[impl] = {"median": float(np.median(m)), "min": float(m.min()), "max": float(m.max())}
            a, b = means["ours"], means["theirs"]
            row["difference"] = float(a.mean() - b.mean())
            row["noise"] = float(np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)))
            row["within_noise"] = bool(abs(row["difference"]) <= 2 * row["noise"])
            rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| steps | loss | electra-jax median [min, max] | PyTorch median [min, max] | difference "
             "| 2 x noise | within |", "|---|---|---|---|---|---|---|"]
    fmt = lambda r: f"{r['median']:.4f} [{r['min']:.4f}, {r['max']:.4f}]"
    for r in rows:
        lines.append(f"| {r['steps']} | {r['loss']} | {fmt(r['ours'])} | {fmt(r['theirs'])} "
                     f"| {r['difference']:+.4f} | {2 * r['noise']:.4f} | {'yes' if r['within_noise'] else 'no'} |")
    return "\n".join(lines)


def plot(runs: dict[str, list[dict]], path: str, smooth: int = 25) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(LOSSES), figsize=(5 * len(LOSSES), 3.6))
    kernel = np.ones(smooth) / smooth
    for ax, name in zip(axes, LOSSES):
        for impl, color in (("ours", "tab:blue"), ("theirs", "tab:orange")):
            for i, run in enumerate(runs[impl]):
                y = np.convolve(run[name], kernel, mode="valid")
                ax.plot(np.arange(len(y)) + smooth, y, color=color, alpha=0.7, lw=1,
                        label=("electra-jax" if impl == "ours" else "PyTorch (transformers)") if i == 0 else None)
        ax.set_title(f"{name} ({smooth}-step mean)")
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(config, out: str, seeds: int = 3, window: int = 100, first_seed: int = 0, log=print,
        peer_mlm: str = "per-slot") -> dict:
    """Build the sample corpus's examples in OUT/data, train both implementations with seeds
    first_seed.. (`seeds` of them) for config.num_train_steps, write OUT/parity.json, .md and .png."""
    import jax
    import torch

    from electra_jax.data import SAMPLE_CORPUS, SAMPLE_TOKENIZER
    from electra_jax.data.builder import BuildArgs, build, read_manifest
    from electra_jax.data.reader import read_examples

    data = os.path.join(out, "data")
    if read_manifest(data) is None:
        log(f"examples from the sample corpus -> {data}")
        build(BuildArgs(tokenizer=SAMPLE_TOKENIZER, out=data, inputs=[SAMPLE_CORPUS],
                        seq_len=config.data.seq_len, shards=2, eval_fraction=0.02, workers=2))
    examples = read_examples(data)
    steps = config.num_train_steps
    runs = {"ours": [], "theirs": []}
    start = time.perf_counter()
    for seed in range(first_seed, first_seed + seeds):
        config.seed = seed
        log(f"seed {seed}: {steps} steps of batch {config.batch_size} x {config.data.seq_len}, each implementation")
        initial, ours = _ours(config, examples, steps, log)
        runs["ours"].append(ours)
        runs["theirs"].append(_theirs(config, initial, examples, steps, seed, log, peer_mlm))
    rows = compare(runs, window)
    result = {"config": config.to_dict(), "peer_mlm": peer_mlm, "seeds": list(range(first_seed, first_seed + seeds)), "window": window,
              "examples": len(examples["input_ids"]),
              "jax": jax.__version__, "torch": torch.__version__, "seconds": round(time.perf_counter() - start),
              "comparison": rows,
              "runs": {impl: [{k: [round(v, 5) for v in vals] for k, vals in run.items()} for run in seeds]
                       for impl, seeds in runs.items()}}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "parity.json"), "w") as f:
        json.dump(result, f)
    table = markdown(rows)
    with open(os.path.join(out, "parity.md"), "w") as f:
        f.write(table + "\n")
    plot(runs, os.path.join(out, "parity.png"))
    log(table)
    within = sum(r["within_noise"] for r in rows)
    log(f"{within}/{len(rows)} windows within 2 standard errors; {out}/parity.json, parity.md, parity.png")
    return result
