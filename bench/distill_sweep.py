"""Short distillation runs to choose the distill recipe's settings (BENCHMARKS.md, Compression).

Prunes the default model by 25 % (8 of 30 layers by block influence or angular distance), then
distills for a few minutes with each setting and reports perplexity and KL against the base on
6 windows of the held-out text's validation split, before and after: settings are chosen on
validation, never on the test split that cards report (compress/texts.py). Uses compress's own
functions; nothing is written.

    .venv-compress/bin/python bench/distill_sweep.py scores      # layer choice, no healing
    .venv-compress/bin/python bench/distill_sweep.py \
        '[{"metric": "bi", "lr": 5e-4, "bs": 8, "seq": 256, "seconds": 240, "ce": 1.0}]'
"""

import copy
import itertools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from compress import checkpoint, evaluate, prune, texts
from compress.device import bf16_native
from compress.distill import batches, kl_divergence, learning_rate

BASE = Path(__file__).resolve().parents[1] / ".leanserve/models/smollm2-135m-instruct"
SCORES = Path("/tmp/distill_sweep_scores.json")
tok = checkpoint.load_tokenizer(BASE)
base = checkpoint.load_model(BASE, "float32")
for p in base.parameters():
    p.requires_grad_(False)
held = texts.read_text(texts.HELDOUT_TEXT)
cal_ids = texts.token_ids(tok, texts.read_text(texts.CALIBRATION_TEXT))


def ppl(model, n=6):
    q = evaluate.evaluate(model, base, tok, held, max_windows=n, max_passages=0, split="validation")
    return round(q.perplexity / q.base_perplexity - 1, 4), round(q.kl_to_base, 4)


def run(metric, drop, lr, bs, seq, seconds, freeze_below=0, direction="forward", warm=5, ce=0.0):
    student = copy.deepcopy(base)
    prune.drop_layers(student, drop)
    before = ppl(student)
    emb = student.get_input_embeddings().weight
    params = []
    for name, p in student.named_parameters():
        train = p is not emb
        if name.startswith("model.layers."):
            train = int(name.split(".")[2]) >= freeze_below
        p.requires_grad_(train)
        if train:
            params.append(p)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    wins = texts.windows(cal_ids, seq)
    stream = batches(wins, bs, 0)
    student.train()
    t0 = time.monotonic()
    toks = 0
    losses = []
    for step in itertools.count():
        spent = (time.monotonic() - t0) / seconds
        if spent >= 1:
            break
        b = next(stream)
        for g in opt.param_groups:
            g["lr"] = learning_rate(lr, step, warm, spent)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_native("cpu")):
            with torch.no_grad():
                tl = base(b, use_cache=False).logits
            sl = student(b, use_cache=False).logits
        loss = kl_divergence(sl, tl, direction)
        if ce:
            loss = loss + ce * torch.nn.functional.cross_entropy(
                sl[:, :-1].float().reshape(-1, sl.shape[-1]), b[:, 1:].reshape(-1)
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        toks += b.numel()
        losses.append(loss.item())
    student.eval()
    after = ppl(student)
    r = dict(
        ce=ce,
        metric=metric,
        drop=drop,
        lr=lr,
        bs=bs,
        seq=seq,
        seconds=seconds,
        freeze_below=freeze_below,
        steps=len(losses),
        tokens=toks,
        s_per_step=round((time.monotonic() - t0) / max(len(losses), 1), 2),
        loss_first=round(sum(losses[:3]) / 3, 3) if losses else None,
        loss_last=round(sum(losses[-3:]) / 3, 3) if losses else None,
        before=before,
        after=after,
    )
    print(json.dumps(r), flush=True)
    return student


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "scores":
        wins = texts.calibration_windows(tok, texts.CALIBRATION_TEXT, 32, 512)
        s = prune.layer_scores(base, wins, 8)
        bi = prune.block_influence_drop(s["block_influence"], 8)
        ang = prune.angular_drop(s["angular_distance"], 8)
        json.dump({"bi": bi, "ang": ang, "scores": s}, SCORES.open("w"))
        for name, d in (("bi", bi), ("ang", ang)):
            st = copy.deepcopy(base)
            prune.drop_layers(st, d)
            print(name, d, ppl(st), flush=True)
    else:
        cfgs = json.loads(mode)
        sc = json.load(SCORES.open())
        for c in cfgs:
            c = dict(c)
            metric = c.pop("metric")
            run(metric, sc[metric] if "drop" not in c else c.pop("drop"), **c)
