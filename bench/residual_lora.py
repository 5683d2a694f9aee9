"""Does SmolLM2-135M add anything to the full-data GBDT when it only has to learn what the GBDT misses?

Issue 13's ensemble bar asks the tuned model's blend with the GBDT to beat the GBDT. The blends measured so far
(docs/benchmarks.md, "Making the tuned model win") combine a model trained on its own with the GBDT after the
fact, and the model spent its 1,024 records learning to read the numbers in its prompt, which the GBDT already
reads. Here the LoRA is trained as the GBDT's residual (boosting with the language model as the last stage):

    P(like) = sigmoid(gbdt_logit + logit_yes - logit_no)

with the pair loss on that sum, so the adapter's gradient is only what the GBDT gets wrong. Training records get
GBDT scores from a GBDT fitted without them (validation and test: the reference GBDT, fitted on the whole train
split, the one `tallrec eval --compare gbdt` shows). Everything else is the recipe's, by default the shipped cf
recipe (recipes/smollm2-135m-lora-cf.yaml: data, LoRA, optimiser, schedule, 1,024 records, two epochs,
validation AUC on 128 records every 16 steps, best step kept); `--recipe` runs another model (on a GPU when
there is one). Reports the residual model beside the GBDT, the history-share
rule and prompt-numbers on the test split, with paired 95% intervals.

    .venv/bin/python bench/residual_lora.py --dataset ml-100k --threads 1           # the two side by side on
    .venv/bin/python bench/residual_lora.py --dataset ml-latest-small --threads 1   # the 2-core CPU: ~50 min
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.blend_ceiling import build  # noqa: E402  (same data as the blend ceiling and the cf recipe)
from bench.common import print_difference_table  # noqa: E402

SOURCES = {"ml-100k": "movielens-100k", "ml-latest-small": "movielens-latest"}
RECIPE = REPO / "recipes" / "smollm2-135m-lora-cf.yaml"
REFERENCES = ("gbdt", "history-share", "prompt-numbers")


def gbdt_offsets(train_all: list[dict], sampled: list[dict], reference, valid: list[dict], test: list[dict]):
    """GBDT logits: out-of-sample for the sampled training records, the ``reference`` GBDT's (fitted on
    ``train_all``) for valid and test."""
    from tallrec_cli.baselines import make_baseline
    from tallrec_cli.calibration import logit

    taken = {record["id"] for record in sampled}
    held_out = make_baseline("gbdt").fit([record for record in train_all if record["id"] not in taken])
    return logit(held_out.score(sampled)), logit(reference.score(valid)), logit(reference.score(test))


def margins(body_and_head, tokenizer, prompts, labels, grad: bool):
    """logit_yes - logit_no at each prompt's answer position (left padding, positions from the mask as the
    scorer computes them)."""
    import torch

    from tallrec_cli.scoring import _padded

    body, head = body_and_head
    ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    input_ids, attention = (tensor.to(head.device) for tensor in _padded(ids, tokenizer.pad_token_id))
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    with torch.set_grad_enabled(grad), torch.autocast(head.device.type, dtype=torch.bfloat16):
        hidden = body(input_ids=input_ids, attention_mask=attention, position_ids=position_ids,
                      use_cache=False).last_hidden_state[:, -1]
    pair = hidden.float() @ head[[labels.positive_id, labels.negative_id]].float().T
    return pair[:, 0] - pair[:, 1]


def score_margins(model, parts, tokenizer, prompts, labels, batch: int = 16) -> np.ndarray:
    import torch

    model.eval()
    order = np.argsort([len(p) for p in prompts])  # shortest first, in batches of similar length
    out = np.empty(len(prompts))
    with torch.inference_mode():
        for start in range(0, len(order), batch):
            index = order[start:start + batch]
            out[index] = margins(parts, tokenizer, [prompts[i] for i in index], labels, False).cpu().numpy()
    model.train()
    return out


def run(dataset: str, recipe: Path, data_root: Path, work: Path, limit: int | None, seed: int, out: Path,
        overrides: dict) -> dict:
    import torch
    import torch.nn.functional as F

    from data_builders import load_split
    from tallrec_cli.baselines import labels_of, make_baseline
    from tallrec_cli.calibration import sigmoid
    from tallrec_cli.compare import Scored, compare
    from tallrec_cli.metrics import safe_auc as auc
    from tallrec_cli.models import load_tokenizer, resolve_model_source
    from tallrec_cli.prompts import load_template, resolve_label_tokens
    from tallrec_cli.scoring import split_lm_head
    from tallrec_cli.train import build_model
    from tallrec_cli.train_config import load_train_config
    from tallrec_cli.train_data import answer_outputs, prepare_data

    started = time.monotonic()
    folder = build(SOURCES[dataset], data_root / dataset, work / dataset)
    config = load_train_config(recipe, {
        "data": {"train": str(folder), "sample_seed": seed, **overrides.get("data", {})},
        "training": {"seed": 42 + seed, **overrides.get("training", {})}, "output": {"dir": str(work / "run")}})
    torch.manual_seed(config.training.seed)
    source = resolve_model_source(config.model.name)
    tokenizer = load_tokenizer(source, padding_side="left")
    template = load_template(config.prompt.template)
    data = prepare_data(config, tokenizer, template)
    labels = resolve_label_tokens(tokenizer, template, config.labels.positive, config.labels.negative,
                                  outputs=answer_outputs(data.train_records + data.valid_records, config))
    train_all = load_split(folder, "train")
    test = load_split(folder, "test")[:limit]
    fitted = {name: make_baseline(name).fit(train_all) for name in REFERENCES}
    train_offset, valid_offset, test_offset = gbdt_offsets(train_all, data.train_records, fitted["gbdt"],
                                                           data.valid_records, test)
    train_y = torch.tensor([float(r["label"]) for r in data.train_records])
    valid_y = np.array(data.valid_labels)
    print(f"[{dataset}] data and GBDT offsets {time.monotonic() - started:.0f} s; GBDT alone: valid AUC "
          f"{auc(valid_y, valid_offset):.3f}, training sample (held out) {auc(train_y.numpy(), train_offset):.3f}",
          flush=True)

    model = build_model(config, source)
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()
    parts = split_lm_head(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    training = config.training
    micro, accumulation = training.micro_batch_size, training.batch_size // training.micro_batch_size
    steps_per_epoch = math.ceil(len(data.train_prompts) / training.batch_size)
    total = math.ceil(steps_per_epoch * training.epochs)
    optimiser = torch.optim.AdamW(trainable, lr=training.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: min(
        (step + 1) / (training.warmup_steps + 1), max(0.0, (total - step) / max(1, total - training.warmup_steps))))
    offsets = torch.tensor(train_offset, dtype=torch.float32)

    def validate() -> float:
        return auc(valid_y, valid_offset + score_margins(model, parts, tokenizer, data.valid_prompts, labels))

    best = (validate(), 0, [p.detach().clone() for p in trainable])
    history = [(0, best[0])]
    print(f"[{dataset}] step 0 valid AUC (GBDT + base model) {best[0]:.4f}", flush=True)
    generator = torch.Generator().manual_seed(training.seed)
    step = 0
    model.train()
    for _ in range(math.ceil(training.epochs)):
        order = torch.randperm(len(data.train_prompts), generator=generator).tolist()
        for start in range(0, len(order), training.batch_size):
            batch = order[start:start + training.batch_size]
            for micro_start in range(0, len(batch), micro):
                rows = batch[micro_start:micro_start + micro]
                margin = margins(parts, tokenizer, [data.train_prompts[i] for i in rows], labels, True)
                target = train_y[rows].to(margin.device)
                loss = F.binary_cross_entropy_with_logits(margin + offsets[rows].to(margin.device), target) / accumulation
                loss.backward()
            optimiser.step()
            schedule.step()
            optimiser.zero_grad()
            step += 1
            if step % training.eval_every == 0 or step == total:
                value = validate()
                history.append((step, value))
                print(f"[{dataset}] step {step}/{total} valid AUC {value:.4f} "
                      f"({time.monotonic() - started:.0f} s)", flush=True)
                if value > best[0]:
                    best = (value, step, [p.detach().clone() for p in trainable])
    with torch.no_grad():
        for parameter, kept in zip(trainable, best[2]):
            parameter.copy_(kept)
    trained = time.monotonic() - started

    test_prompts = [template.render(record, tokenizer) for record in test]
    test_margin = score_margins(model, parts, tokenizer, test_prompts, labels)
    references = [Scored(baseline.name, baseline.label, baseline.score(test)) for baseline in fitted.values()]
    primary = Scored("residual", "GBDT + LoRA residual", sigmoid(test_offset + test_margin))
    comparison = compare(test, primary, references)
    adapter_alone = compare(test, Scored("margin", "LoRA residual alone", sigmoid(test_margin)), [])
    result = {"dataset": dataset, "test_records": len(test), "seed": seed, "best_step": best[1],
              "valid_auc": history, "train_seconds": round(trained),
              "total_seconds": round(time.monotonic() - started), "comparison": comparison,
              "residual_alone": adapter_alone["rows"][0]["metrics"],
              "labels_mean": float(labels_of(test).mean())}
    out.write_text(json.dumps(result, indent=1, default=float))
    return result


def report(result: dict) -> None:
    print(f"\n### {result['dataset']}: {result['test_records']} test records, seed {result['seed']}, best step "
          f"{result['best_step']}, training {result['train_seconds']} s, total {result['total_seconds']} s\n")
    print_difference_table([(row["label"], row) for row in result["comparison"]["rows"]], "residual - row")
    alone = result["residual_alone"]
    print(f"| LoRA residual alone | {alone['auc']:.3f} | {alone['gauc']:.3f} | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(SOURCES), required=True)
    parser.add_argument("--recipe", default=str(RECIPE), help="training recipe (model, LoRA, schedule; its "
                        "data.train is replaced by the built dataset); default: the cf recipe")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--limit", type=int, default=0, help="first N test records (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="sample seed (training seed 42 + it)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--shots", type=int, default=None, help="training records (default: the recipe's 1,024)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: the recipe's 2)")
    parser.add_argument("--out", default=None, help="JSON result file (default: a temporary folder)")
    args = parser.parse_args()

    import torch

    from tallrec_cli.console import quiet_libraries

    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work:
        out = Path(args.out) if args.out else Path(work) / "result.json"
        overrides = {"data": {"shots": args.shots} if args.shots else {},
                     "training": {"epochs": args.epochs} if args.epochs else {}}
        report(run(args.dataset, Path(args.recipe), Path(args.data), Path(work), args.limit or None, args.seed, out, overrides))


if __name__ == "__main__":
    main()
