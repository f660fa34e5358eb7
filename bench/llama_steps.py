"""How llama.cpp batches on this machine, without HTTP: a bare decode loop against aiml's scheduler.

For each bundled GGUF model: tokens/s of (1) ``llama_decode`` steps of 1 and of 8 sequences
called straight through llama-cpp-python's C bindings, and (2) aiml's ``BatchScheduler``
given 1 and then 8 jobs of 128 tokens (``ignore_eos``). If (2) scales as (1) does, the
scheduler adds nothing to llama.cpp's own ceiling; compare both with
``llama-batched-bench`` built from the same sources. Then prefix reuse: the time to the
first token of a prompt that shares a ~400-token prefix with one served before, against a
prompt of the same length whose prefix is new.

    .venv/bin/python -m bench.llama_steps
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import llama_cpp.llama_cpp as llama

from aiml.bundled import BUNDLED
from aiml.engines.llamacpp.native import NativeModel, Sampling
from aiml.engines.llamacpp.scheduler import BatchScheduler, Job

GGUFS = ("smollm2-135m-instruct", "gemma3-270m")


def bare_steps(native: NativeModel, sequences: int, steps: int = 40) -> float:
    """tok/s of decode steps of one token for each of ``sequences`` sequences."""
    for seq in range(sequences):
        native.forget(seq)
        native.decode([(100 + j, j, seq, j == 31) for j in range(32)])
    started = time.perf_counter()
    for step in range(steps):
        native.decode([(200 + step, 32 + step, seq, True) for seq in range(sequences)])
    return sequences * steps / (time.perf_counter() - started)


def scheduled(native: NativeModel, scheduler: BatchScheduler, jobs: int, tokens: int) -> float:
    done = threading.Event()
    left = [jobs]

    def emit(kind: str, value: object) -> None:
        if kind in ("done", "error"):
            left[0] -= 1
            if not left[0]:
                done.set()

    started = time.perf_counter()
    for n in range(jobs):
        prompt = native.tokenize(f"Story {n} {time.time()}: the quiet harbour town at dusk")
        scheduler.submit(Job(tokens=prompt, sampling=Sampling(temperature=0.0),
                             max_tokens=tokens, stop=(), emit=emit, ignore_eos=True))  # fmt: skip
    done.wait()
    return jobs * tokens / (time.perf_counter() - started)


def first_token_s(native: NativeModel, scheduler: BatchScheduler, text: str) -> float:
    """Seconds from submitting ``text`` to its first generated token."""
    first = threading.Event()
    done = threading.Event()

    def emit(kind: str, value: object) -> None:
        if kind == "text":
            first.set()
        if kind in ("done", "error"):
            first.set()
            done.set()

    started = time.perf_counter()
    scheduler.submit(Job(tokens=native.tokenize(text), sampling=Sampling(temperature=0.0),
                         max_tokens=2, stop=(), emit=emit, ignore_eos=True))  # fmt: skip
    first.wait()
    took = time.perf_counter() - started
    done.wait()
    return took


def prefix_reuse(native: NativeModel, scheduler: BatchScheduler, rounds: int) -> str:
    system = " ".join(f"Rule {n}: answer briefly and politely." for n in range(50))
    shared, novel = [], []
    for n in range(rounds):
        first_token_s(native, scheduler, f"{system} Question {n}: why?")  # caches the prefix
        shared.append(first_token_s(native, scheduler, f"{system} Question {n}: how?"))
        novel.append(first_token_s(native, scheduler, f"Round {n}. {system} Question: how?"))
    s, v = sorted(shared)[len(shared) // 2], sorted(novel)[len(novel) // 2]
    return f"first token, shared prefix {s * 1000:.0f} ms vs new prefix {v * 1000:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="aiml-bench-steps-"))
    print(llama.llama_print_system_info().decode().strip())
    for name in GGUFS:
        path = next(m for m in BUNDLED if m.registered_name == name).locate(work)
        native = NativeModel(path, n_seq=8, n_ctx_seq=512, n_batch=512, n_threads=args.threads)
        scheduler = BatchScheduler(native, name=name)
        try:
            for _ in range(args.rounds):
                print(f"{name}: bare decode 1 seq {bare_steps(native, 1):.1f} tok/s, "
                      f"8 seq {bare_steps(native, 8):.1f}")  # fmt: skip
            for seq in range(8):
                native.forget(seq)
            for _ in range(args.rounds):
                one = scheduled(native, scheduler, 1, 128)
                eight = scheduled(native, scheduler, 8, 128)
                print(f"{name}: scheduler 1 job {one:.1f} tok/s, 8 jobs {eight:.1f} "
                      f"({eight / one:.2f}x)")  # fmt: skip
            print(f"{name}: {prefix_reuse(native, scheduler, 3)}")
        finally:
            scheduler.close()
            native.close()


if __name__ == "__main__":
    main()
