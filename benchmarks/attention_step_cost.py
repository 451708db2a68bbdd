"""What one llama_decode pass costs by its shape, with llama.cpp's flash attention on and off.

Loads the bundled model in process with the engine's context (one KV stream per slot, 16
slots), fills every slot with ``--context`` tokens, then times passes shaped as the scheduler
builds them: n sequences of one decode token each, one prompt chunk, and a decode step with a
prompt chunk beside it. Each pass's cells are removed after it, so every repeat sees the same
context. Prints the median milliseconds per pass and per token, for flash attention ``auto``
(llama.cpp's default: on, CPUs included) and ``off`` (the ``flash_attention: false`` option);
asserts nothing.

    python benchmarks/attention_step_cost.py [--context 200 800] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import llama_cpp

from vllm_service.engine.llamacpp.device import place
from vllm_service.engine.llamacpp.model import LlamaModel, amx_built
from vllm_service.engine.llamacpp.model_files import resolve_model_path
from vllm_service.engine.llamacpp.options import LlamaCppOptions

SLOTS = 16
SHAPES: dict[str, list[tuple[int, int]]] = {
    "1 sequence x 1 token": [(0, 1)],
    "4 sequences x 1 token": [(i, 1) for i in range(4)],
    "16 sequences x 1 token": [(i, 1) for i in range(SLOTS)],
    "1 prompt chunk of 100": [(0, 100)],
    "15 decoding + a chunk of 400": [(i, 1) for i in range(15)] + [(15, 400)],
}


def fill(batch: Any, spec: list[tuple[int, int]], start: int) -> None:
    n = 0
    for seq_id, count in spec:
        for k in range(count):
            batch.token[n] = 200 + k % 100
            batch.pos[n] = start + k
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq_id
            batch.logits[n] = int(k == count - 1)
            n += 1
    batch.n_tokens = n


def measure(flash: bool | None, context: int, repeats: int) -> dict[str, float]:
    options = LlamaCppOptions(flash_attention=flash)
    model = LlamaModel(
        resolve_model_path("smollm2"),
        place(options, gpu_offload_supported=False, amx_built=amx_built()),
    )
    ctx = model.new_context(n_slots=SLOTS, slot_cells=2048, batch_tokens=512, n_threads=2)
    memory = llama_cpp.llama_get_memory(ctx)
    batch = llama_cpp.llama_batch_init(512, 0, 1)
    for seq_id in range(SLOTS):
        for start in range(0, context, 100):
            fill(batch, [(seq_id, min(100, context - start))], start)
            assert llama_cpp.llama_decode(ctx, batch) == 0
    out = {}
    for name, spec in SHAPES.items():
        times = []
        for _ in range(repeats + 1):  # the first is a warm-up
            fill(batch, spec, context)
            started = time.perf_counter()
            assert llama_cpp.llama_decode(ctx, batch) == 0
            times.append(time.perf_counter() - started)
            for seq_id, _ in spec:
                llama_cpp.llama_memory_seq_rm(memory, seq_id, context, -1)
        out[name] = statistics.median(times[1:])
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    model.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, nargs="+", default=[200, 800])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print("| context | pass | flash attention auto | off | off / auto |")
    print("| --- | --- | --- | --- | --- |")
    for context in args.context:
        auto = measure(None, context, args.repeats)
        off = measure(False, context, args.repeats)
        for name, spec in SHAPES.items():
            tokens = sum(count for _, count in spec)
            a, o = auto[name] * 1e3, off[name] * 1e3
            print(
                f"| {context} | {name} | {a:.1f} ms ({a / tokens:.2f}/token) | "
                f"{o:.1f} ms ({o / tokens:.2f}/token) | {o / a:.2f} |"
            )


if __name__ == "__main__":
    main()
