"""Plant bugs the suite once missed, one at a time, in a copy of the repository, and check that the
tests covering each place now fail. Run from the repository root:

    python tests/mutation/known_bugs.py            # all; prints caught / MISSED per bug
    python tests/mutation/known_bugs.py 3 7        # only these (1-based)

Each bug is one replacement of an exact source string (it must occur exactly once, so a refactor that
moves the line shows up as "stale" instead of passing silently). Add a bug here whenever a test is
strengthened after a miss.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from mutate import copy_repository  # this folder is on sys.path when run as a script

# (what, file, exact source, replacement, pytest arguments)
BUGS = [
    ("scanned layers exported in reverse order", "electra_jax/model.py",
     "jax.tree.map(lambda x, i=i: x[i], encoder[\"layers\"])",
     "jax.tree.map(lambda x, i=i: x[n - 1 - i], encoder[\"layers\"])",
     ["tests/test_hf_parity.py", "-k", "logits or round_trip"]),
    ("a checkpoint from N processes re-initialised on M instead of restored", "electra_jax/pretrain.py",
     "            state = checkpoints.restore(latest, abstract)\n",
     "            state = s.init(init_rng)\n",
     ["tests/test_multihost.py", "-k", "resumes"]),
    ("[SEP] removed from the never-mask ids", "electra_jax/config.py",
     "never_mask_ids=tuple(sorted({t.cls_id, t.sep_id, t.mask_id, t.pad_id}))",
     "never_mask_ids=tuple(sorted({t.cls_id, t.mask_id, t.pad_id}))",
     ["tests/test_masking.py", "tests/test_objective.py"]),
    ("model_spec forces float32", "electra_jax/config.py",
     "        dtype=m.dtype,\n", "        dtype=\"float32\",\n",
     ["tests/test_config_and_model.py", "-k", "bfloat16"]),
    ("layer-wise LR decay not chained into the optimizer", "electra_jax/optim.py",
     "core = optax.chain(core, layerwise_lr_decay(depths_fn, p.layerwise_lr_decay))",
     "core = core",
     ["tests/test_optim.py", "tests/test_finetune.py", "-k", "layerwise or optim"]),
    ("tagging labels every sub-token", "electra_jax/finetune/tasks.py",
     "if word is not None and word != previous:", "if word is not None:",
     ["tests/test_finetune.py", "-k", "tagging or token_classifier or head_and_loss"]),
    ("eval per-slot NLL doubled", "electra_jax/objective.py",
     "\"mlm_nll_sum\": jnp.sum(w * f.mlm_nll),", "\"mlm_nll_sum\": jnp.sum(w * 2 * f.mlm_nll),",
     ["tests/test_objective.py"]),
    ("fine-tuning ignores the --init weights", "electra_jax/finetune/run.py",
     "        state = s.state_from_params({**state.params, **backbone})\n",
     "        state = s.state_from_params(state.params)\n",
     ["tests/test_finetune.py", "-k", "learns_a_task or init_weights"]),
    ("a gs:// export uploads config.json first", "electra_jax/hf.py",
     "key=lambda n: n == \"config.json\"", "key=lambda n: n != \"config.json\"",
     ["tests/test_hf_parity.py", "-k", "gfile"]),
    ("a generator accepted as --init", "electra_jax/pretrain.py",
     "if \"ElectraForMaskedLM\" in saved.get(\"architectures\", []) and not mlm:",
     "if False and \"ElectraForMaskedLM\" in saved.get(\"architectures\", []) and not mlm:",
     ["tests/test_finetune.py", "-k", "bad_input"]),
    # Bugs one could plant in the BERT (mlm) objective, 2026-12-02.
    ("the mlm objective's loss ignores gen_weight", "electra_jax/objective.py",
     "jnp.zeros(()), spec.gen_weight * mlm)", "jnp.zeros(()), mlm)",
     ["tests/test_objective.py", "-k", "mlm_objective"]),
    ("the MLM export is not marked, so fine-tuning refuses it as a generator", "electra_jax/hf.py",
     "extra_config={MLM_MARK: \"mlm\"}", "extra_config={}", ["tests/test_pretrain.py", "-k", "mlm_objective"]),
    ("random tokens drawn from a tenth of the vocabulary", "electra_jax/masking.py",
     "positions.shape, 0, vocab_size)", "positions.shape, 0, vocab_size // 10)", ["tests/test_masking.py", "-k", "bert"]),
    # Survivors of the first cosmic-ray runs (2026-12-02), killed by the tests added for them.
    ("[UNK] (id 1, below the special ids) never masked", "electra_jax/masking.py",
     "ok &= input_ids != token", "ok &= input_ids > token", ["tests/test_masking.py"]),
    ("a row with nothing to mask still gets slots", "electra_jax/masking.py",
     "(num_cand[:, None] > 0)", "(num_cand[:, None] >= 0)", ["tests/test_masking.py"]),
    ("mask_tokens defaults to drawing without replacement", "electra_jax/masking.py",
     "    with_replacement: bool = True,\n", "    with_replacement: bool = False,\n", ["tests/test_masking.py"]),
    ("a repeated position found by <= instead of ==", "electra_jax/masking.py",
     "same = (positions[:, :, None] == positions[:, None, :])", "same = (positions[:, :, None] <= positions[:, None, :])",
     ["tests/test_masking.py"]),
    ("the training sampled_accuracy always 1", "electra_jax/objective.py",
     "_ratio(jnp.sum(w * (f.sampled == targets)), jnp.sum(w))",
     "_ratio(jnp.sum(w * (f.sampled is not targets)), jnp.sum(w))", ["tests/test_objective.py", "-k", "recomputation"]),
    ("the logged disc_loss always 0", "electra_jax/objective.py",
     "\"disc_loss\": _ratio(f.disc_loss, 1.0),", "\"disc_loss\": _ratio(f.disc_loss, 0.0),",
     ["tests/test_objective.py", "-k", "recomputation"]),
    ("the eval MLM accuracy always 0", "electra_jax/objective.py",
     "\"mlm_correct\": jnp.sum(w * (jnp.argmax(f.gen_logits, -1) == targets)),",
     "\"mlm_correct\": jnp.sum(w * (jnp.argmax(f.gen_logits, -1) is targets)),",
     ["tests/test_objective.py", "-k", "eval_metrics"]),
    ("an unknown sampler silently Gumbel", "electra_jax/objective.py",
     "if sampler != \"gumbel\":", "if sampler < \"gumbel\":", ["tests/test_objective.py", "-k", "sampler"]),
    ("sample_tokens' default temperature not 1", "electra_jax/objective.py",
     "def sample_tokens(rng: Array, logits: Array, temperature: float = 1.0,",
     "def sample_tokens(rng: Array, logits: Array, temperature: float = 2.0,", ["tests/test_objective.py", "-k", "samplers"]),
    ("HF weights larger than the config accepted", "electra_jax/hf.py",
     "if tuple(np.shape(state_dict[key])) != want:", "if tuple(np.shape(state_dict[key])) < want:",
     ["tests/test_hf_parity.py", "-k", "round_trip"]),
    ("warmup of 1 step skipped", "electra_jax/optim.py",
     "if warmup_steps <= 0:", "if warmup_steps <= 1:", ["tests/test_optim.py"]),
    ("the Adam default b1 wrong", "electra_jax/optim.py",
     "b1: float = 0.9, b2: float = 0.999,", "b1: float = 1.9, b2: float = 0.999,", ["tests/test_optim.py"]),
    ("grad_clip_norm=0 clips everything to 0", "electra_jax/optim.py",
     "p.grad_clip_norm and p.grad_clip_norm > 0:", "p.grad_clip_norm is not None and p.grad_clip_norm > -1:",
     ["tests/test_optim.py"]),
    ("skip_nonfinite=1 does not skip", "electra_jax/optim.py",
     "if p.skip_nonfinite > 0:", "if p.skip_nonfinite > 1:", ["tests/test_optim.py"]),
    ("skip_nonfinite=0 still wraps the optimizer (and logs skipped steps)", "electra_jax/optim.py",
     "if p.skip_nonfinite > 0:", "if p.skip_nonfinite >= 0:", ["tests/test_pretrain.py", "-k", "nan_stops"]),
    # Survivors of the exhaustive objective and hf runs (2026-12-03), each then killed by a new test.
    ("an HF import that returns no tensors at all", "electra_jax/hf.py",
     "    params: dict = {}\n    for path, key, layout in entries:", "    params: dict = {}\n    for path, key, layout in []:",
     ["tests/test_hf_parity.py", "-k", "round_trip"]),
    ("the sequence classifier's head left out of its export", "electra_jax/hf.py",
     "for dense in (\"dense\", \"out_proj\"):", "for dense in ():", ["tests/test_hf_parity.py", "-k", "heads_export"]),
    ("a pytorch_model.bin unpickled with arbitrary objects", "electra_jax/hf.py",
     "weights_only=True)", "weights_only=False)", ["tests/test_hf_parity.py", "-k", "unpickles"]),
    ("equal embedding and hidden sizes above 256 given a projection", "electra_jax/hf.py",
     "if spec.embedding_size != enc.hidden_size:", "if spec.embedding_size is not enc.hidden_size:",
     ["tests/test_hf_parity.py", "-k", "round_trip"]),
    ("a gelu model read from config.json refused", "electra_jax/hf.py",
     "if c.get(\"hidden_act\", \"gelu\") != \"gelu\":", "if c.get(\"hidden_act\", \"gelu\") is not \"gelu\":",
     ["tests/test_hf_parity.py", "-k", "pair_are_checked"]),
    ("reading a .bin without torch fails with a bare ImportError", "electra_jax/hf.py",
     "        except ImportError:\n            raise HFFormatError(f\"{legacy}: reading .bin",
     "        except KeyError:\n            raise HFFormatError(f\"{legacy}: reading .bin", ["tests/test_hf_parity.py", "-k", "without_torch"]),
    ("training without dropout unless asked for it", "electra_jax/objective.py",
     "                 deterministic: bool = False, masked: Masked | None = None,",
     "                 deterministic: bool = True, masked: Masked | None = None,",
     ["tests/test_objective.py", "-k", "dropout_unless"]),
    ("a uniform draw of exactly 0 makes a NaN Gumbel score", "electra_jax/objective.py",
     "-jnp.log(-jnp.log(u + 1e-9) + 1e-9)", "-jnp.log(-jnp.log(u - 1e-9) + 1e-9)",
     ["tests/test_objective.py", "-k", "exactly_zero_samples"]),
    ("the inverse CDF draws a token of probability 0 at u = 0", "electra_jax/objective.py",
     "jnp.sum(cum <= u * cum[..., -1:], -1)", "jnp.sum(cum < u * cum[..., -1:], -1)",
     ["tests/test_objective.py", "-k", "exactly_zero_samples"]),
    ("the inverse CDF overflows on large logits", "electra_jax/objective.py",
     "jnp.exp(logits - jnp.max(logits, -1, keepdims=True))", "jnp.exp(logits + jnp.max(logits, -1, keepdims=True))",
     ["tests/test_objective.py", "-k", "inverse_cdf_sampling"]),
    ("the inverse CDF leaves its block at the top of u", "electra_jax/objective.py",
     "token = jnp.minimum(_first_above(inside, u_token), block - 1)", "token = jnp.minimum(_first_above(inside, u_token), block)",
     ["tests/test_objective.py", "-k", "top_of_u"]),
    ("a saturated discriminator's tokens dropped from the AUC", "electra_jax/objective.py",
     "(probs * AUC_BINS).astype(jnp.int32), AUC_BINS - 1)", "(probs * AUC_BINS).astype(jnp.int32), AUC_BINS + 1)",
     ["tests/test_objective.py", "-k", "saturated"]),
    ("the training precision counts padding", "electra_jax/objective.py",
     "pred = (f.disc_logits > 0).astype(jnp.float32) * m\n    metrics |= {",
     "pred = (f.disc_logits > 0).astype(jnp.float32) / m\n    metrics |= {", ["tests/test_objective.py", "-k", "recomputation"]),
    ("a logit of exactly 0 predicted replaced in eval", "electra_jax/objective.py",
     "pred = (f.disc_logits > 0).astype(jnp.float32) * m\n    per_example",
     "pred = (f.disc_logits >= 0).astype(jnp.float32) * m\n    per_example", ["tests/test_objective.py", "-k", "exactly_zero_predicts"]),
    ("a sampler typed on the command line (not an interned str) refused", "electra_jax/objective.py",
     "    if sampler != \"gumbel\":", "    if sampler is not \"gumbel\":", ["tests/test_objective.py", "-k", "typed_on"]),
    ("a precision over exactly one predicted token reported as 0", "electra_jax/objective.py",
     "return float(a / b) if b > 0 else 0.0", "return float(a / b) if b > 1 else 0.0",
     ["tests/test_objective.py", "-k", "hand_counted"]),
    ("the MLM loss's 1e-6 subtracted", "electra_jax/objective.py",
     "return jnp.sum(weights * nll) / (total + 1e-6), nll", "return jnp.sum(weights * nll) / (total - 1e-6), nll",
     ["tests/test_objective.py", "-k", "1e_6"]),
]


def main(which: list[int]) -> int:
    missed = 0
    with tempfile.TemporaryDirectory() as copy:
        copy_repository(copy)
        env = {**os.environ, "PYTHONPATH": copy}  # the copy's electra_jax comes first
        for number, (what, path, old, new, tests) in enumerate(BUGS, 1):
            if which and number not in which:
                continue
            source = open(os.path.join(copy, path)).read()
            if source.count(old) != 1:
                print(f"{number:2d} stale  {what}: the line is not in {path} exactly once", flush=True)
                missed += 1
                continue
            with open(os.path.join(copy, path), "w") as f:
                f.write(source.replace(old, new))
            start = time.perf_counter()
            run = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                                 cwd=copy, env=env, capture_output=True, text=True)
            with open(os.path.join(copy, path), "w") as f:
                f.write(source)
            failed = [line for line in run.stdout.splitlines() if line.startswith("FAILED")]
            verdict = "caught" if run.returncode == 1 and failed else "MISSED"
            missed += verdict != "caught"
            print(f"{number:2d} {verdict} {what} ({time.perf_counter() - start:.0f} s): "
                  f"{failed[0][7:] if failed else run.stdout.strip().splitlines()[-1:]}", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main([int(a) for a in sys.argv[1:]]))
