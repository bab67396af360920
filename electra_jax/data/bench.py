"""Input-pipeline benchmark: builder tokens/s (1 and 2 workers) and reader sequences/s (seq 128 and 512,
batches laid out for 1 and 8 devices). Prints and appends JSON lines; not a test."""

from __future__ import annotations

import datetime
import gzip
import json
import os
import tempfile
import time

from electra_jax.data import SAMPLE_CORPUS


def run(results: str, copies: int = 4, batches: int = 400, global_batch: int = 256) -> list[dict]:
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from electra_jax.data.builder import BuildArgs, build
    from electra_jax.data.reader import Reader, train_dataset
    from electra_jax.data.tokenizer import save_tokenizer, train_tokenizer

    rows = []
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory() as tmp:
        with gzip.open(SAMPLE_CORPUS, "rt", encoding="utf-8") as f:
            text = f.read()
        for i in range(copies):  # several files, so both workers have work from the start
            with open(os.path.join(tmp, f"corpus{i}.txt"), "w", encoding="utf-8") as f:
                f.write(text)
        save_tokenizer(train_tokenizer(text.splitlines(), vocab_size=8192), os.path.join(tmp, "tok"))
        for workers in (1, 2):
            m = build(BuildArgs(tokenizer=os.path.join(tmp, "tok"), out=os.path.join(tmp, f"b{workers}"),
                                inputs=[os.path.join(tmp, "corpus*.txt")], seq_len=128, workers=workers,
                                progress=False))
            rows.append({"what": "build-data", "workers": workers, "input_tokens": m["input"]["tokens"],
                         "seconds": m["build_seconds"], "tokens_per_s": m["tokens_per_second"]})
            print(f"build-data, {workers} worker(s): {m['tokens_per_second']:,} tokens/s "
                  f"({m['input']['tokens']:,} tokens in {m['build_seconds']} s)")
        for seq_len in (128, 512):
            out = os.path.join(tmp, f"r{seq_len}")
            build(BuildArgs(tokenizer=os.path.join(tmp, "tok"), out=out, inputs=[SAMPLE_CORPUS],
                            seq_len=seq_len, workers=2, progress=False))
            for n_dev, threads in [(n, None) for n in sorted({1, len(jax.devices())})] + [(1, 1)]:
                mesh = Mesh(np.asarray(jax.devices()[:n_dev]).reshape(-1, 1, 1), ("data", "fsdp", "tensor"))
                reader = Reader(train_dataset(out, global_batch, seed=0, threads=threads),
                                NamedSharding(mesh, P(("data", "fsdp"), None)))
                for _ in range(10):
                    next(reader)
                start = time.perf_counter()
                for _ in range(batches):
                    batch = next(reader)
                jax.block_until_ready(batch)
                rate = batches * global_batch / (time.perf_counter() - start)
                rows.append({"what": "reader", "seq_len": seq_len, "devices": n_dev,
                             "tf_threads": threads, "global_batch": global_batch, "sequences_per_s": rate})
                print(f"reader, seq {seq_len}, {n_dev} device(s), tf.data threads "
                      f"{threads or 'default'}: {rate:,.0f} sequences/s")
    with open(results, "a") as f:
        for row in rows:
            f.write(json.dumps({"date": stamp, "cpus": os.cpu_count(), **row}) + "\n")
    return rows
