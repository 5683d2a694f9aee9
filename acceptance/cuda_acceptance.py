"""What the first GPU run must confirm for the CUDA-path fixes of issue 15, one entry per numbered item.

Nothing here has run on a GPU yet: each fix was tested on CPU with the GPU-only parts mocked
(tests/test_cuda_paths.py). The GPU acceptance script (acceptance/gpu_check.py) can iterate over ``ISSUE_15``
and report each item as confirmed or not. Memory goals are for a 24 GiB card (emulate it on a larger GPU with
``torch.cuda.set_per_process_memory_fraction``); estimates are held against ``torch.cuda.max_memory_allocated``.
"""

ISSUE_15 = {
    1: "QLoRA/8-bit with dtype float16 (tallrec-llama-7b.yaml): the first optimizer step runs; trainable LoRA "
       "weights are float32 after SFTTrainer init; loss falls over 5 steps",
    2: "bench/eval_throughput.py --gpu: peak allocated before the first measurement < 15 GiB (bf16 7B, no fp32 copy)",
    3: "8-bit and 4-bit: embeddings/norms/lm_head in the compute dtype, hidden states bf16/fp16; peak memory of the "
       "TALLRec recipe (micro 16 x 512) vs --dry-run within 15%",
    4: "--dry-run training and validation estimates vs torch.cuda.max_memory_allocated for llama-7b QLoRA "
       "(checkpointing on/off), llama-3-8b and qwen2.5-7b shapes: each within 15%; logits term ~0 with Triton",
    5: "validation during k-bit training: autocast on (flash/mem-efficient SDPA), activations bf16, AUC equal to "
       "tallrec eval on the same adapter to 1e-3",
    6: "auto batch size on a 7B 4-bit model with prefix cache: oom_retries == 0; a forced cuBLAS alloc failure "
       "is backed off",
    7: "accelerate launch --multi_gpu (2 ranks) QLoRA: each rank's weights on cuda:LOCAL_RANK, GPU 0 memory "
       "equal to GPU 1's within 10%",
    8: "plain tallrec train with 2 visible GPUs: ConfigError before loading, naming CUDA_VISIBLE_DEVICES",
    9: "in-process sweep of two 7B cells: memory allocated after cell 1 returns to < 0.5 GiB before cell 2 loads",
    10: "2-rank DDP with patience: both ranks stop at the same step; metrics.jsonl rows equal on both ranks",
    11: "export --merged --device cuda on a 24 GiB-limited 7B: merges in bf16 on the GPU; with a too-small "
        "limit, ResourceError advising --device cpu",
    12: "tallrec eval --adapter QLORA_RUN: loads 4-bit by default, manifest records quantization 4bit, dtype bfloat16",
    13: "CUDA with Triton: compact head not installed, trl's Triton kernel runs; without a C compiler: the "
        "preflight warning",
    14: "fresh venv with the floors (transformers 5.2, trl 1.16, peft 0.18.1, accelerate 1.13): the test suite "
        "passes; bf16 forced on a pre-Ampere card (if any): ConfigError",
    15: "bench/train_throughput.py --gpu: random 7B built on the GPU in bf16, budget 24 GiB, no step-0 validation "
        "in the timed loop; bench/export_bench.py --gpu: AUC check over 64 prompts passes",
}
