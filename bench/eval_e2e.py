"""Eval speed as a user meets it: `tallrec eval` against TALLRec's own evaluate.py, each a whole process.

Both sides run from start to exit as separate processes, with the machine's threads (each library's default),
on the same records (one TALLRec-format JSON file of MovieLens-100K test records, TALLRec's split) and the same
trained LoRA adapter:
  - TALLRec: its evaluate.py, patched only where it cannot run here as written (the list is printed with the
    results; every substitution must match exactly once or the bench stops), batch 32, greedy ``generate`` of up
    to 128 tokens, P(yes) from the first step's vocabulary softmax.
  - ours: ``tallrec eval --adapter RUN --test FILE --template tallrec-exact --score tallrec`` with its defaults
    (dtype auto, shared-prefix cache, length-sorted batches, 1,000 bootstrap resamples), so both compute
    TALLRec's number on TALLRec's prompt.
A warm-up round of each (untimed: page cache, the embedded model's one-time conversion) comes first, then rounds
that alternate which side goes first; the speed-up is the median of the per-round ratios, so load from other
jobs that comes and goes falls on both sides alike. Reported: wall and CPU seconds of every process, the load
average around it, our phase times (from the eval's metrics.json, `tallrec eval --timings`), the largest
difference between the two sides' P(yes), and the machine.

TALLRec's evaluate.py is not part of this repository (their code); fetch it once, at the commit this bench was
written against:

    curl -L -o /tmp/tallrec-evaluate.py \\
      https://raw.githubusercontent.com/SAI990323/TALLRec/c1db29ce6501bce32cc8c3e343c4eb14155beeb1/evaluate.py
    .venv/bin/pip install fire          # evaluate.py's command line
    .venv/bin/python -m bench.eval_e2e --tallrec-evaluate /tmp/tallrec-evaluate.py --limit 256 --rounds 3

``--adapter RUN`` reuses a train run trained with ``prompt.template=tallrec-exact`` (default: one is trained
here first, a few minutes). ``--tallrec-threads as-written`` keeps TALLRec's ``torch.set_num_threads(1)``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import build_movie_dataset, train_adapter

TALLREC_COMMIT = "c1db29ce6501bce32cc8c3e343c4eb14155beeb1"
TALLREC_SHA256 = "5f6e865ae7df290a2bb8e2a60341942c094e39bcdc1ccc859bc1b0a905c35652"
TEMPLATE = "tallrec-exact"  # TALLRec's generate_prompt, byte for byte
PHASES = ("process start", "inputs", "imports", "model load", "adapter fold", "tokenise", "score", "metrics",
          "write")


@dataclass(frozen=True)
class Substitution:
    old: str
    new: str
    why: str


def tallrec_patches(positive_id: int, negative_id: int, keep_threads: bool) -> list[Substitution]:
    """What evaluate.py needs to run on this model on a CPU, and nothing else."""
    patches = [
        Substitution("import gradio as gr\n", "",
                     "unused web-UI import, not installed here (dropping it only shortens TALLRec's start)"),
        Substitution("from transformers import GenerationConfig, LlamaForCausalLM, LlamaTokenizer",
                     "from transformers import AutoTokenizer, GenerationConfig, LlamaForCausalLM",
                     "tokenizer class: SmolLM2 has a BPE tokenizer, not LLaMA's sentencepiece one"),
        Substitution("tokenizer = LlamaTokenizer.from_pretrained(base_model)",
                     "tokenizer = AutoTokenizer.from_pretrained(base_model)", "tokenizer class (as above)"),
        Substitution("scores[:,[8241, 3782]]", f"scores[:,[{positive_id}, {negative_id}]]",
                     "label token ids from this tokenizer (8241/3782 are LLaMA-1's Yes/No)"),
        Substitution("    if not load_8bit:\n        model.half()", '    if not load_8bit and device != "cpu":\n'
                     "        model.half()", "no fp16 on CPU (half-precision matmuls there are slow or missing)"),
        Substitution('if torch.__version__ >= "2" and sys.platform != "win32":',
                     'if torch.__version__ >= "2" and sys.platform != "win32" and device != "cpu":',
                     "no torch.compile on CPU (its compile time would dominate a short run)"),
        Substitution("    data[train_sce][test_sce][model_name][seed][sample] = roc_auc_score(gold, pred)\n",
                     "    json.dump(test_data, open(result_json_data + '.records.json', 'w'))\n"
                     "    data[train_sce][test_sce][model_name][seed][sample] = roc_auc_score(gold, pred)\n",
                     "also write each record's P(yes), to compare with ours (milliseconds)"),
    ]
    if not keep_threads:
        patches.insert(0, Substitution("torch.set_num_threads(1)\n", "",
                                       "the machine's threads, as ours (TALLRec pins one)"))
    return patches


def patch_evaluate(source: str, patches: list[Substitution]) -> str:
    """``source`` with every substitution applied; one that does not match exactly once stops the bench."""
    for patch in patches:
        found = source.count(patch.old)
        if found != 1:
            raise SystemExit(f"cannot patch evaluate.py ({patch.why}): expected {patch.old!r} once, found it "
                             f"{found} times; pass TALLRec's evaluate.py at commit {TALLREC_COMMIT}")
        source = source.replace(patch.old, patch.new)
    return source


@dataclass
class Run:
    side: str
    wall: float
    cpu: float  # user + system seconds of the process
    load_before: float
    load_after: float
    phases: dict[str, float] = field(default_factory=dict)


def timed(side: str, command: list[str], output_dir: Path) -> Run:
    """Run ``command`` to completion; wall and CPU seconds, one-minute load average before and after."""
    load_before = os.getloadavg()[0]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    completed = subprocess.run(command, check=False, capture_output=True, text=True, cwd=output_dir)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode != 0:
        raise SystemExit(f"{side} failed (exit {completed.returncode}): {' '.join(command)}\n"
                         f"{completed.stderr[-3000:]}")
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    return Run(side, wall, cpu, load_before, os.getloadavg()[0])


def tallrec_command(script: Path, base_model: str, adapter_link: Path, test_file: Path, work: Path) -> list[str]:
    return [sys.executable, str(script), "--base_model", base_model, "--lora_weights", str(adapter_link),
            "--test_data_path", str(test_file), "--result_json_data", str(work / "result.json")]


def ours_command(adapter: Path, test_file: Path, work: Path) -> list[str]:
    console_script = Path(sys.executable).with_name("tallrec")
    start = [str(console_script)] if console_script.exists() else [sys.executable, "-m", "tallrec_cli"]
    return [*start, "eval", "--adapter", str(adapter), "--test", str(test_file), "--template", TEMPLATE,
            "--score", "tallrec", "--output", str(work), "--timings"]


def tallrec_scores(work: Path) -> list[float]:
    return [record["logits"][0] for record in json.loads((work / "result.json.records.json").read_text())]


def our_results(work: Path, test_file: Path) -> tuple[list[float], dict]:
    """P(yes) per record and the metrics (with ``dtype`` from the manifest) of our eval in ``work``."""
    folder = work / test_file.stem
    scores = [json.loads(line)["p_yes"] for line in (folder / "predictions.jsonl").read_text().splitlines()]
    metrics = json.loads((folder / "metrics.json").read_text())
    return scores, {**metrics, "dtype": json.loads((folder / "manifest.json").read_text())["dtype"]}


def write_test_file(dataset: Path, limit: int, folder: Path) -> Path:
    """The first ``limit`` test records as one TALLRec-format JSON list (extra fields ride along: TALLRec reads
    instruction, input and output; ours also reads user_id for GAUC)."""
    from data_builders import load_split

    records = load_split(dataset, "test")[:limit]
    if len(records) < limit:
        raise SystemExit(f"{dataset} has only {len(records)} test records; lower --limit")
    path = folder / "movie-test.json"
    path.write_text(json.dumps(records))
    return path


def machine() -> dict:
    import torch
    import transformers

    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if flags else platform.processor()
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "bf16_matmul": bool({"avx512_bf16", "amx_bf16"} & flags), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__}


def label_ids(adapter: Path) -> tuple[int, int]:
    """The Yes / No token ids at the answer position, as ours resolves them (from the tokenizer)."""
    from tallrec_cli.model.loading import load_tokenizer, resolve_model_source
    from tallrec_cli.model.prompts import load_template, resolve_label_tokens

    base = json.loads((adapter / "manifest.json").read_text())["base_model"]["name"]
    labels = resolve_label_tokens(load_tokenizer(resolve_model_source(base)), load_template(TEMPLATE))
    return labels.positive_id, labels.negative_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tallrec-evaluate", required=True, type=Path,
                        help="TALLRec's evaluate.py (see above for where to get it)")
    parser.add_argument("--adapter", type=Path, help="a train run (template tallrec-exact); default: train one")
    parser.add_argument("--train-steps", type=int, default=8, help="steps of 8 records for the adapter trained here")
    parser.add_argument("--data", help="dataset folder (default: build MovieLens-100K, TALLRec's split)")
    parser.add_argument("--limit", type=int, default=256, help="test records, the same on both sides")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (after one untimed warm-up round)")
    parser.add_argument("--tallrec-threads", choices=("machine", "as-written"), default="machine",
                        help="machine: both sides use the machine's threads; as-written: TALLRec keeps one")
    parser.add_argument("--json", type=Path, help="also write every number measured here")
    args = parser.parse_args()

    source = args.tallrec_evaluate.read_text()
    sha256 = hashlib.sha256(source.encode()).hexdigest()
    from tallrec_cli.model.loading import resolve_model_source

    work = Path(tempfile.mkdtemp(prefix="bench-eval-e2e-"))
    dataset = build_movie_dataset(args.data)
    adapter = args.adapter or train_adapter(dataset, args.train_steps, TEMPLATE)
    recorded = json.loads((adapter / "manifest.json").read_text())
    if recorded.get("prompt", {}).get("template") != TEMPLATE:
        raise SystemExit(f"{adapter} was trained with another template; train one with prompt.template={TEMPLATE}")
    positive_id, negative_id = label_ids(adapter)
    patches = tallrec_patches(positive_id, negative_id, args.tallrec_threads == "as-written")
    script = work / "tallrec_evaluate.py"
    script.write_text(patch_evaluate(source, patches))
    base_model = resolve_model_source(recorded["base_model"]["name"]).path  # converts the embedded model once
    # evaluate.py reads "<task>_<model>_<seed>_<shots>" from the adapter folder's name
    adapter_link = work / "movie_smollm2_0_64"
    adapter_link.symlink_to((adapter / recorded.get("adapter_dir", "adapter")).resolve())
    test_file = write_test_file(dataset, args.limit, work)

    def one(side: str, name: str) -> Run:
        folder = work / name
        folder.mkdir()
        if side == "TALLRec":
            run = timed(side, tallrec_command(script, base_model, adapter_link, test_file, folder), folder)
        else:
            run = timed(side, ours_command(adapter, test_file, folder), folder)
            run.phases = our_results(folder, test_file)[1]["timing"]
        return run

    started_load = os.getloadavg()
    warm = [one("TALLRec", "warm-tallrec"), one("ours", "warm-ours")]
    rounds = []
    for index in range(args.rounds):
        order = ("TALLRec", "ours") if index % 2 == 0 else ("ours", "TALLRec")
        runs = {side: one(side, f"round-{index}-{side}") for side in order}
        rounds.append((order[0], runs["TALLRec"], runs["ours"]))
    report(args, machine(), sha256, patches, warm, rounds, work, test_file, started_load)


def report(args, box: dict, sha256: str, patches: list[Substitution], warm: list[Run], rounds: list, work: Path,
           test_file: Path, started_load) -> None:
    theirs = tallrec_scores(work / "warm-tallrec")
    ours, metrics = our_results(work / "warm-ours", test_file)
    difference = max(abs(a - b) for a, b in zip(theirs, ours))
    ratios = [tallrec.wall / mine.wall for _, tallrec, mine in rounds]
    cpu_ratios = [tallrec.cpu / mine.cpu for _, tallrec, mine in rounds]
    phases = {name: statistics.median(mine.phases.get(name, 0.0) for _, _, mine in rounds) for name in PHASES}
    exit_seconds = statistics.median(mine.wall - sum(mine.phases.values()) for _, _, mine in rounds)

    print(f"\n{box['cpu']}, {box['cores']} cores, {box['torch_threads']} torch threads, bf16 matmul "
          f"{'yes' if box['bf16_matmul'] else 'no'} (our dtype auto: {metrics['dtype']}); "
          f"Python {box['python']}, torch {box['torch']}, transformers {box['transformers']}; load average "
          f"(1/5/15 min) at start {', '.join(f'{v:.2f}' for v in started_load)}, at end "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"{args.limit} MovieLens-100K test records (TALLRec split), adapter {args.adapter or 'trained here'}; "
          f"TALLRec's evaluate.py sha256 {sha256[:12]}"
          f"{'' if sha256 == TALLREC_SHA256 else f' (NOT the commit {TALLREC_COMMIT[:7]} one)'}, threads: "
          f"{args.tallrec_threads}\n")
    print("| round | first | TALLRec s (CPU s) | ours s (CPU s) | speed-up (CPU) | load before -> after |")
    print("|---:|---|---:|---:|---:|---|")
    for index, (first, tallrec, mine) in enumerate(rounds):
        print(f"| {index + 1} | {first} | {tallrec.wall:.1f} ({tallrec.cpu:.1f}) | {mine.wall:.1f} ({mine.cpu:.1f}) | "
              f"{tallrec.wall / mine.wall:.2f}x ({tallrec.cpu / mine.cpu:.2f}x) | "
              f"{min(tallrec.load_before, mine.load_before):.1f} -> {max(tallrec.load_after, mine.load_after):.1f} |")
    print(f"\n**median speed-up {statistics.median(ratios):.2f}x** wall (CPU time {statistics.median(cpu_ratios):.2f}x) "
          f"over {len(rounds)} rounds; warm-up: TALLRec {warm[0].wall:.1f} s, ours {warm[1].wall:.1f} s")
    print(f"P(yes): max |ours - TALLRec| {difference:.1e}; AUC ours {metrics['auc']:.4f}\n")
    print("| our phase (median s) | " + " | ".join(PHASES) + " | exit |")
    print("|---|" + "---:|" * (len(PHASES) + 1))
    print("| | " + " | ".join(f"{phases[name]:.2f}" for name in PHASES) + f" | {exit_seconds:.2f} |")
    print("\nTALLRec's evaluate.py, patched:")
    for patch in patches:
        print(f"- {patch.why}")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": box, "records": args.limit, "tallrec_sha256": sha256, "threads": args.tallrec_threads,
            "patches": [patch.why for patch in patches], "max_abs_difference": difference, "auc": metrics["auc"],
            "median_speedup": statistics.median(ratios), "median_cpu_speedup": statistics.median(cpu_ratios),
            "rounds": [{"first": first, "tallrec": vars(tallrec), "ours": vars(mine)} for first, tallrec, mine in rounds],
            "warm_up": [vars(run) for run in warm], "phases_median": phases, "exit_median": exit_seconds,
        }, indent=2))


if __name__ == "__main__":
    main()
