"""What structured outputs cost on llama.cpp: building a grammar, and sampling under it.

For the ten pydantic schemas of tests/api/test_structured_outputs.py, on SmolLM2-135M:

* schema -> GBNF (llama-cpp-python's converter): first time, and from aiml's cache;
* llama.cpp parsing the GBNF into a grammar sampler (once per request);
* one sampling step on real logits: the grammar over the whole vocabulary first (as
  ``Llama`` chains it), against aiml's chain-first-then-check (llama.cpp server's way);
* whole greedy generations through the batch scheduler: ms per token, free and constrained.

    .venv/bin/python -m bench.grammar
"""

from __future__ import annotations

import ctypes
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import llama_cpp as llama
import numpy as np

from aiml.bundled import BUNDLED
from aiml.engines.llamacpp import scheduler as scheduling
from aiml.engines.llamacpp.json_grammar import _schema_grammar, grammar_for
from aiml.engines.llamacpp.native import (
    NativeModel,
    ParsedGrammar,
    SamplerChain,
    Sampling,
    _candidates,
)
from aiml.engines.llamacpp.scheduler import BatchScheduler, Job
from aiml.types import OutputFormat
from tests.api.test_structured_outputs import SCHEMAS


def timed(call: Callable[[], object], repeat: int) -> float:
    """Median milliseconds of ``call``."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="aiml-bench-grammar-"))
    smol = next(m for m in BUNDLED if m.registered_name == "smollm2-135m-instruct").locate(work)
    formats = [OutputFormat(schema=json.dumps(s.model_json_schema())) for s in SCHEMAS]
    cold, warm = [], []
    for output in formats:
        assert output.schema is not None
        _schema_grammar.cache_clear()
        cold.append(timed(lambda o=output: grammar_for(o), 1))  # type: ignore[misc]
        warm.append(timed(lambda o=output: grammar_for(o), 200))  # type: ignore[misc]
    print(f"schema -> GBNF, first time: median {statistics.median(cold):.2f} ms, "
          f"max {max(cold):.2f} ms; cached: {statistics.median(warm) * 1000:.1f} us")  # fmt: skip

    model = NativeModel(smol, n_seq=1, n_ctx_seq=512, n_batch=512, n_threads=2)
    grammars = [grammar_for(output).text for output in formats]
    parse = [
        timed(lambda g=g: ParsedGrammar(model.vocab, g).free(), 20)  # type: ignore[misc]
        for g in grammars
    ]
    print(f"GBNF -> llama.cpp grammar sampler: median {statistics.median(parse):.2f} ms, "
          f"max {max(parse):.2f} ms")  # fmt: skip

    # One decode gives real logits; then sample the first token of an answer both ways.
    tokens = model.tokenize("A cat as JSON: ")
    _decode(model, tokens)
    grammar = grammars[-1]

    def whole_vocabulary() -> None:
        chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
        llama.llama_sampler_chain_add(
            chain, llama.llama_sampler_init_grammar(model.vocab, grammar.encode(), b"root")
        )
        llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_greedy())
        llama.llama_sampler_sample(chain, model.ctx, len(tokens) - 1)
        llama.llama_sampler_free(chain)

    def chain_first() -> None:
        chain = SamplerChain(
            Sampling(temperature=0), model.n_vocab, 0, ParsedGrammar(model.vocab, grammar)
        )
        chain.sample(model.ctx, -1)
        chain.free()

    rows = []
    for _ in range(3):  # interleaved
        rows.append((timed(whole_vocabulary, 20), timed(chain_first, 20)))
    full = statistics.median(r[0] for r in rows)
    first = statistics.median(r[1] for r in rows)
    print(f"one sampling step (incl. grammar setup): grammar over the vocabulary {full:.2f} ms, "
          f"chain first then check {first:.2f} ms ({full / first:.1f}x)")  # fmt: skip
    model.close()
    _generations(smol, grammars)


def _decode(model: NativeModel, tokens: list[int]) -> None:
    rows = [(token, pos, 0, pos == len(tokens) - 1) for pos, token in enumerate(tokens)]
    if model.decode(rows) != 0:
        raise RuntimeError("decode failed")


def _generations(smol: Path, grammars: list[str]) -> None:
    """Greedy answers to one prompt through the batch scheduler, free and under each grammar:
    milliseconds per generated token (the constrained ones stop when their JSON is done)."""
    model = NativeModel(smol, n_seq=1, n_ctx_seq=512, n_batch=512, n_threads=2)
    scheduler = BatchScheduler(model, name="bench")
    prompt = model.tokenize("<|im_start|>user\nDescribe a cat as JSON.<|im_end|>\n"
                            "<|im_start|>assistant\n", special=True)  # fmt: skip

    def run(grammar: str | None) -> float:
        done = threading.Event()
        parsed = None if grammar is None else ParsedGrammar(model.vocab, grammar)
        emit = lambda kind, _: kind != "text" and done.set()  # noqa: E731
        job = Job(tokens=prompt, sampling=Sampling(temperature=0), max_tokens=120, stop=(),
                  emit=emit, grammar=parsed)  # fmt: skip
        started = time.perf_counter()
        scheduler.submit(job)
        done.wait()
        return (time.perf_counter() - started) * 1000 / max(1, job.completion_tokens)

    free, constrained, whole = [], [], []
    for _ in range(3):  # interleaved
        free.append(run(None))
        constrained.extend(run(g) for g in grammars)
        scheduling.SamplerChain = WholeVocabulary  # type: ignore[misc]
        whole.extend(run(g) for g in grammars)
        scheduling.SamplerChain = SamplerChain  # type: ignore[misc]
    scheduler.close()
    model.close()
    print(f"whole generations, ms per token: free {statistics.median(free):.2f}, "
          f"under a grammar {statistics.median(constrained):.2f} (chain first), "
          f"{statistics.median(whole):.2f} (grammar over the vocabulary every step)")  # fmt: skip


class WholeVocabulary(SamplerChain):
    """The grammar filters every token before the chain samples, every step (``Llama``'s
    way), for comparison with aiml's chain-first sampling."""

    def sample(self, ctx: object, index: int) -> int:
        if self._grammar is None:
            return super().sample(ctx, index)
        logits = np.ctypeslib.as_array(llama.llama_get_logits_ith(ctx, index), (self._n_vocab,))
        candidates, array = _candidates(logits)
        llama.llama_sampler_apply(self._grammar, ctypes.byref(array))
        llama.llama_sampler_apply(self._chain, ctypes.byref(array))
        token = int(candidates["id"][array.selected])
        llama.llama_sampler_accept(self._grammar, token)
        llama.llama_sampler_accept(self._chain, token)
        return token


if __name__ == "__main__":
    main()
