"""The PyTorch peer: the same ELECTRA objective written with transformers' `ElectraForMaskedLM` (generator)
and `ElectraForPreTraining` (discriminator), as a researcher would write it without electra-jax.

Same sizes, batch, masking rule (15% of real non-special tokens drawn with replacement, 85% of them
[MASK]), Gumbel sampling without gradient, loss = MLM + 50 x BCE, shared embeddings (the generator's
embedding module *is* the discriminator's, and its LM head is tied to the word table), dropout as
configured, gradient clipping at 1.0 and `torch.optim.AdamW`. The generator is called the way its class
is meant to be used, `generator(input_ids, labels=...)`, so it projects every position onto the
vocabulary (electra-jax projects only the masked slots: one of the optimisations being measured).

Timed after warm-up, eager and under `torch.compile`, in the process that times electra-jax.
"""

from __future__ import annotations

import time

import numpy as np

from electra_jax.bench.timing import Runner, summarize_times
from electra_jax.config import ModelSpec, ObjectiveSpec


def torch_electra(spec: ModelSpec, device: str = "cpu", params=None):
    """(generator, discriminator): transformers' `ElectraForMaskedLM` and `ElectraForPreTraining` sharing
    one embeddings module, the generator's LM head tied to its word table (as the paper). With `params`
    (an electra-jax parameter tree) they hold those weights, mapped by our HF mapping; without, the
    classes' own initialisation."""
    import torch
    import transformers

    from electra_jax.hf import hf_config, to_hf_state_dict

    if spec.objective != "electra" or spec.uniform_generator:
        raise ValueError("the PyTorch peer is ELECTRA with a learned generator: not objective.name=mlm "
                         "or objective.uniform_generator")

    towers = {}
    for tower, cls in (("discriminator", transformers.ElectraForPreTraining),
                       ("generator", transformers.ElectraForMaskedLM)):
        model = cls(transformers.ElectraConfig(**hf_config(spec, tower)))
        if params is not None:
            state = {k: torch.tensor(np.asarray(v)) for k, v in to_hf_state_dict(params, spec, tower).items()}
            missing, unexpected = model.load_state_dict(state, strict=False)
            if unexpected or set(missing) - {"generator_lm_head.weight"}:
                raise ValueError(f"{tower}: missing {missing}, unexpected {unexpected}")
        towers[tower] = model.to(device)
    gen, disc = towers["generator"], towers["discriminator"]
    gen.electra.embeddings = disc.electra.embeddings  # shared tables, as the paper
    gen.generator_lm_head.weight = disc.electra.embeddings.word_embeddings.weight
    return gen, disc


def named_parameters(gen, disc) -> list[tuple[str, object]]:
    """Every trainable tensor once ("tower/name"): the shared embeddings and tied head are one tensor."""
    seen, out = set(), []
    for tower, model in (("discriminator", disc), ("generator", gen)):
        for name, p in model.named_parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append((f"{tower}/{name}", p))
    return out


def original_adam_step(params, moments: dict, step: int, lr_peak: float, total: int, warmup: int,
                       b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6, weight_decay: float = 0.01,
                       clip: float = 1.0) -> float:
    """One update of google-research/electra's AdamWeightDecayOptimizer (model/optimization.py), written
    out in PyTorch: global-norm clip, raw moments (no bias correction), decoupled decay except LayerNorm
    and biases, and lr = peak * (1 - t / T) * min(1, t / warmup). `params`: (name, tensor) pairs holding
    gradients, which are cleared. Returns the learning rate used."""
    import torch

    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for _, p in params)).float()
    scale = clip / torch.maximum(norm, torch.tensor(clip)) if clip else 1.0  # 0: no clipping, as ours
    lr = lr_peak * (1 - step / total) * (min(1.0, step / warmup) if warmup else 1.0)
    with torch.no_grad():
        for name, p in params:
            g = p.grad * scale
            m, v = moments.get(name, (torch.zeros_like(p), torch.zeros_like(p)))
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
            moments[name] = (m, v)
            update = m / (torch.sqrt(v) + eps)
            if not ("LayerNorm" in name or name.endswith("bias")):
                update = update + weight_decay * p
            p -= lr * update
            p.grad = None
    return lr


def electra_loss_fn(gen, disc, objective: ObjectiveSpec, gather: bool = False):
    """loss(input_ids, input_mask, segment_ids) -> (total, mlm, disc): the whole objective in PyTorch,
    masking and sampling included, drawing from torch's generator."""
    import torch
    import torch.nn.functional as F

    never = torch.tensor(objective.never_mask_ids)

    def scatter(ids, positions, values, write):  # ids[b, positions] = values where write
        seq_len = ids.shape[1]
        padded = F.pad(ids, (0, 1))  # unwritten slots go to a spare column, then dropped
        return padded.scatter(1, torch.where(write, positions, seq_len), values)[:, :seq_len].contiguous()

    def loss(input_ids, input_mask, segment_ids):
        batch, _ = input_ids.shape
        n = objective.max_predictions
        # Masking, on the device: n draws with replacement among the candidates, k real per row.
        cand = input_mask.bool() & ~torch.isin(input_ids, never.to(input_ids.device))
        k = torch.clamp(torch.round(input_mask.sum(-1) * objective.mask_prob).long(), 1, n)
        positions = torch.multinomial(cand.float(), n, replacement=True)
        valid = torch.arange(n, device=input_ids.device)[None, :] < k[:, None]
        to_mask = valid & (torch.rand(batch, n, device=input_ids.device) < objective.mask_token_prob)
        masked_ids = scatter(input_ids, positions, torch.full_like(positions, objective.mask_id), to_mask)

        # gather: the generator's encoder, then its head at the masked slots only (as ours), and the MLM
        # mean over the slots, a position drawn twice counted twice (the original's definition).
        # Otherwise the class as documented: labels= counts such a position once.
        if gather:
            hidden = gen.electra(masked_ids, attention_mask=input_mask, token_type_ids=segment_ids)[0]
            hidden = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))
            logits = gen.generator_lm_head(gen.generator_predictions(hidden))
            nll = F.cross_entropy(logits.flatten(0, 1).float(), input_ids.gather(1, positions).flatten(),
                                  reduction="none").view(batch, n)
            mlm = (nll * valid).sum() / valid.sum()
        else:  # the class as documented: logits at every position, loss where labels != -100
            labels = scatter(torch.full_like(input_ids, -100), positions, input_ids.gather(1, positions),
                             valid)
            out = gen(input_ids=masked_ids, attention_mask=input_mask, token_type_ids=segment_ids,
                      labels=labels)
            mlm = out.loss
            logits = out.logits.gather(1, positions[..., None].expand(-1, -1, out.logits.shape[-1]))
        with torch.no_grad():  # Gumbel-max sample at the masked slots; no gradient through sampling
            logits = logits.detach().float()
            gumbel = -torch.log(-torch.log(torch.rand_like(logits) + 1e-9) + 1e-9)
            sampled = torch.argmax(logits / objective.temperature + gumbel, -1)
            corrupted = scatter(input_ids, positions, sampled, valid)
            is_fake = (corrupted != input_ids).float()
        disc_logits = disc(input_ids=corrupted, attention_mask=input_mask, token_type_ids=segment_ids).logits
        mask = input_mask.float()
        bce = F.binary_cross_entropy_with_logits(disc_logits.float(), is_fake, reduction="none")
        disc_loss = (bce * mask).sum() / mask.sum()
        return objective.gen_weight * mlm + objective.disc_weight * disc_loss, mlm.detach(), disc_loss.detach()

    return loss


def prepare_peer(spec: ModelSpec, objective: ObjectiveSpec, batch: dict[str, np.ndarray], *,
                 mode: str = "eager", gather: bool = False, learning_rate: float = 5e-4,
                 weight_decay: float = 0.01, dtype: str = "float32", device: str | None = None
                 ) -> tuple[dict, Runner]:
    """The peer's training step, built and run once (under torch.compile that first step compiles):
    `mode` "eager" or "compile" (default inductor backend); `dtype` bfloat16 runs the forward under
    autocast (fp32 weights, as ours); `gather` projects only the masked slots onto the vocabulary
    (a stronger peer than the class's own forward)."""
    import torch

    if mode not in ("eager", "compile"):
        raise ValueError(f"peer mode {mode!r}: eager or compile")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    torch.manual_seed(0)
    gen, disc = torch_electra(spec, device)
    params = [p for _, p in named_parameters(gen, disc)]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay, eps=1e-6)
    loss_fn = electra_loss_fn(gen, disc, objective, gather)
    if mode == "compile":
        loss_fn = torch.compile(loss_fn)
    tensors = [torch.as_tensor(batch[k], dtype=torch.long, device=device)
               for k in ("input_ids", "input_mask", "segment_ids")]
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16,
                              enabled=dtype == "bfloat16")
    last = {}

    def step():
        with autocast:
            loss = loss_fn(*tensors)[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        last["loss"] = loss.detach()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    step()
    n_batch, seq_len = batch["input_ids"].shape
    record = {"impl": f"pytorch-{mode}" + ("-gathered" if gather else ""), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "dtype": dtype, "batch_size": n_batch,
              "seq_len": seq_len, "first_step_s": round(time.perf_counter() - t0, 3)}

    def finish(times: list[float]) -> dict:
        result = {**record, "steps": len(times), **summarize_times(times, n_batch, seq_len),
                  "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
                  "final_loss": float(last["loss"])}
        gen.cpu(), disc.cpu()  # give the accelerator memory back for the next runner
        optimizer.state.clear()
        if cuda:
            torch.cuda.empty_cache()
        return result

    return record, Runner(step, finish)
