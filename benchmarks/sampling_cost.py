"""What sampling a step costs: a llama.cpp sampler chain per sequence vs the array sampling.

Loads the bundled model in process, decodes one batch of n distinct prompts (n = 1, 4, 16), and
then samples the n output rows many times both ways, on the same logits:

* ``chain``: a llama.cpp sampler chain per sequence, as the engine did before (penalties when
  asked, temperature, top_p, dist; greedy for temperature 0), ``llama_sampler_sample`` per row;
* ``array``: engine/llamacpp/sampling.py's ``sample_step`` over all rows together.

Sampling settings: ``top_p`` (temperature 0.8, top_p 0.95: the benchmarks' default), ``greedy``,
and ``bundled default`` (temperature 1, repetition penalty 1.1: what a request that sets nothing
gets from the bundled model). Prints the median milliseconds per step; asserts nothing.

    python benchmarks/sampling_cost.py [--repeats 50]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import llama_cpp

from vllm_service.engine.base import SamplingParams
from vllm_service.engine.llamacpp.device import place
from vllm_service.engine.llamacpp.model import LlamaModel, amx_built
from vllm_service.engine.llamacpp.model_files import resolve_model_path
from vllm_service.engine.llamacpp.options import LlamaCppOptions
from vllm_service.engine.llamacpp.sampling import SamplerChain, sample_step

SETTINGS: dict[str, dict[str, Any]] = {
    "top_p": {"temperature": 0.8, "top_p": 0.95},
    "greedy": {"temperature": 0.0},
    "bundled default": {"temperature": 1.0, "repetition_penalty": 1.1},
}


def decode_rows(model: LlamaModel, ctx: Any, n: int) -> list[int]:
    """Decode n distinct prompts in one batch; the batch index of each one's last token."""
    batch = llama_cpp.llama_batch_init(512, 0, 1)
    rows = []
    k = 0
    for seq in range(n):
        text = f"Request {seq}: write about subject number {seq * 7} and its history."
        tokens = model.tokenize(text, add_special=True, parse_special=False)
        for pos, token in enumerate(tokens):
            batch.token[k], batch.pos[k], batch.n_seq_id[k] = token, pos, 1
            batch.seq_id[k][0] = seq
            batch.logits[k] = pos == len(tokens) - 1
            k += 1
        rows.append(k - 1)
    batch.n_tokens = k
    assert llama_cpp.llama_decode(ctx, batch) == 0
    return rows


def chain_for(model: LlamaModel, setting: dict[str, Any], seed: int) -> Any:
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    repetition = setting.get("repetition_penalty", 1.0)
    if repetition != 1.0:
        penalties = llama_cpp.llama_sampler_init_penalties(model.n_vocab, 64, repetition, 0, 0)
        llama_cpp.llama_sampler_chain_add(chain, penalties)
    if setting["temperature"] <= 0:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain
    llama_cpp.llama_sampler_chain_add(
        chain, llama_cpp.llama_sampler_init_temp(setting["temperature"])
    )
    if setting.get("top_p", 1.0) < 1.0:
        llama_cpp.llama_sampler_chain_add(
            chain, llama_cpp.llama_sampler_init_top_p(setting["top_p"], 1)
        )
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))
    return chain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    options = LlamaCppOptions()
    placement = place(options, gpu_offload_supported=False, amx_built=amx_built())
    model = LlamaModel(resolve_model_path(options.model), placement)
    print(f"vocabulary {model.n_vocab} tokens, {placement.n_threads} threads")
    print("| setting | n | chain ms/step | array ms/step | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for n in (1, 4, 16):
        ctx = model.new_context(
            n_slots=n, slot_cells=256, batch_tokens=512, n_threads=placement.n_threads
        )
        rows = decode_rows(model, ctx, n)
        for name, setting in SETTINGS.items():
            chains = [chain_for(model, setting, i) for i in range(n)]
            params = SamplingParams(**setting, top_k=0, min_p=0.0, seed=1)
            samplers = [SamplerChain(model, params, penalty_window=64) for _ in range(n)]
            chain_times, array_times = [], []
            for _ in range(args.repeats):
                start = time.perf_counter()
                for chain, row in zip(chains, rows, strict=True):
                    llama_cpp.llama_sampler_sample(chain, ctx, row)
                chain_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                sample_step(ctx, model.n_vocab, samplers, rows)
                array_times.append(time.perf_counter() - start)
            a, b = statistics.median(chain_times) * 1e3, statistics.median(array_times) * 1e3
            print(f"| {name} | {n} | {a:.2f} | {b:.2f} | {b / a:.2f} |")
            for chain in chains:
                llama_cpp.llama_sampler_free(chain)
            for sampler in samplers:
                sampler.free()
        llama_cpp.llama_free(ctx)
    model.close()


if __name__ == "__main__":
    main()
