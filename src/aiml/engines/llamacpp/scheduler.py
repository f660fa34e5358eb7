"""Continuous batching for one loaded GGUF model, as llama.cpp's own server does it.

One thread owns the model's context and runs a loop of steps. Each step builds one
``llama_decode`` batch: the next token of every sequence that is generating, then chunks
of the prompts still being read (at most ``n_batch`` tokens in all, so a long prompt does
not stall every stream), and samples each sequence with its own sampler. Where a grammar
refuses a sequence's pick, filtering the whole vocabulary (seconds for a large enum) runs on
the model's grammar thread and that sequence sits out the steps until it is done; the
others are never held up by it. A request waits
in a FIFO until a slot (a KV sequence) is free and joins the running batch at the next
step. A slot keeps the KV of its last request's tokens: a new request reuses the longest
prefix any slot holds (in place, or copied from a busy slot), so a shared system prompt or
a continued chat is not read again. A request whose client left is dropped at the next
step. (Shapes from llama.cpp's ``tools/server``: slots, one decode per step over all of
them, ``llama_memory_seq_rm`` when a slot is reused.)
"""

from __future__ import annotations

import codecs
import collections
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .native import NativeModel, ParsedGrammar, SamplerChain, Sampling
from .stop_strings import partial_stop, stop_at

__all__ = ["BatchScheduler", "Job", "SchedulerStats"]

log = logging.getLogger("aiml.llamacpp")

#: A free slot is reused in place when at least this share of what it caches is the new
#: prompt's prefix (llama-server's default slot similarity).
_SIMILARITY = 0.5

#: What a job emits: ("text", str), ("done", finish_reason), ("error", Exception).
Emit = Callable[[str, Any], None]


@dataclass(eq=False)
class Job:
    """One generation: its prompt tokens, sampling, limits, and where its output goes."""

    tokens: list[int]
    sampling: Sampling
    max_tokens: int
    stop: tuple[str, ...]
    emit: Emit
    ignore_eos: bool = False
    #: The grammar its tokens must follow, parsed before it was submitted (never on the
    #: scheduler's thread); the job owns it until its sampler chain takes it.
    grammar: ParsedGrammar | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    arrived: float = field(default_factory=time.monotonic)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reused_tokens: int = 0


@dataclass
class SchedulerStats:
    """Counters and gauges of one model's scheduler (read by /metrics and the stats route)."""

    running: int = 0
    waiting: int = 0
    steps: int = 0
    decoded_tokens: int = 0  # every token through llama_decode: prompts and generation
    generated_tokens: int = 0
    prompt_tokens: int = 0
    reused_prompt_tokens: int = 0  # prompt tokens whose KV was reused, not computed
    #: Histogram of batch sizes (sequences with a token in a step), by size.
    batch_sizes: collections.Counter[int] = field(default_factory=collections.Counter)
    tokens_per_s: float = 0.0  # generated tokens per second over the last few seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "waiting": self.waiting,
            "steps": self.steps,
            "decoded_tokens": self.decoded_tokens,
            "generated_tokens": self.generated_tokens,
            "prompt_tokens": self.prompt_tokens,
            "reused_prompt_tokens": self.reused_prompt_tokens,
            "batch_sizes": {str(size): n for size, n in sorted(self.batch_sizes.items())},
            "tokens_per_s": round(self.tokens_per_s, 2),
        }


@dataclass(eq=False)
class _Slot:
    seq: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV this sequence holds
    job: Job | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens not yet decoded
    sampler: SamplerChain | None = None
    next_token: int | None = None  # sampled, to be decoded in the next step
    constraining: Future[int] | None = None  # its grammar picking, on the grammar thread
    decoder: Any = None
    held: str = ""  # text held back: it may be the start of a stop string
    last_used: float = 0.0


class BatchScheduler:
    """Runs every generation of one model, up to ``model.n_seq`` at a time."""

    def __init__(self, model: NativeModel, *, name: str, seed: int = 0xFFFFFFFF) -> None:
        self._model = model
        self._name = name
        self._seed = seed
        self._slots = [_Slot(seq) for seq in range(model.n_seq)]
        self._waiting: collections.deque[Job] = collections.deque()
        self._wake = threading.Condition()
        self._closing = False
        self._window: collections.deque[tuple[float, int]] = collections.deque()
        # One thread: a grammar-heavy request takes at most one core from the decoding.
        self._grammar_thread = ThreadPoolExecutor(1, thread_name_prefix=f"aiml-grammar-{name}")
        self.stats = SchedulerStats()
        #: Called (on the scheduler's thread) with each job as it gets a slot.
        self.admitted: Callable[[Job], None] = lambda job: None
        self._thread = threading.Thread(target=self._run, name=f"aiml-batch-{name}", daemon=True)
        self._thread.start()

    @property
    def n_ctx_seq(self) -> int:
        return self._model.n_ctx_seq

    def submit(self, job: Job) -> None:
        """Queue ``job``; it joins the running batch at the next step with a free slot."""
        with self._wake:
            if self._closing:
                raise RuntimeError("the model is being unloaded")
            self._waiting.append(job)
            self.stats.waiting = len(self._waiting)
            self._wake.notify()

    def wake(self) -> None:
        """Look at the jobs again now (one was cancelled)."""
        with self._wake:
            self._wake.notify()

    def close(self) -> None:
        """Stop after the current step; jobs still queued or running end with an error.
        Blocking: call it from a worker thread."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join()
        self._grammar_thread.shutdown(wait=True)

    # -- the loop (scheduler thread) ----------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._wake:
                    while not self._closing and not self._ready():
                        self._wake.wait()
                    if self._closing:
                        break
                    self._admit()
                self._step()
        except Exception as exc:  # a bug or a llama.cpp failure: every job hears of it
            log.exception("the batch scheduler of %s failed", self._name)
            self._fail_all(exc)
            return
        self._fail_all(RuntimeError("the model was unloaded"))

    def _ready(self) -> bool:
        """Whether a step has work: a job to admit, or a running one that is not waiting
        for its grammar (a grammar that is done, or a job cancelled meanwhile, counts)."""
        free = any(slot.job is None for slot in self._slots)
        return (bool(self._waiting) and free) or any(
            slot.job is not None
            and (
                slot.constraining is None or slot.constraining.done() or slot.job.cancelled.is_set()
            )
            for slot in self._slots
        )

    def _admit(self) -> None:
        """Give free slots to waiting jobs, first come first served (under ``_wake``)."""
        while self._waiting:
            job = self._waiting[0]
            if job.cancelled.is_set():
                self._waiting.popleft()
                _discard(job)
                continue
            free = [slot for slot in self._slots if slot.job is None]
            if not free:
                break
            self._waiting.popleft()
            self._start(job, free)
        self.stats.waiting = len(self._waiting)
        self.stats.running = sum(slot.job is not None for slot in self._slots)

    def _start(self, job: Job, free: list[_Slot]) -> None:
        """Put ``job`` in the free slot that reuses most of its prompt's KV."""
        model = self._model
        sampler = SamplerChain(job.sampling, model.n_vocab, self._seed, job.grammar)
        job.grammar = None  # the chain owns it now
        prompt = job.tokens
        limit = len(prompt) - 1  # the last prompt token is always decoded: it gives logits
        slot = max(free, key=lambda s: (_common(s.cached, prompt, limit), -s.last_used))
        reuse = _common(slot.cached, prompt, limit)
        if reuse < _SIMILARITY * len(slot.cached):
            # Mostly a different conversation: keep its cache for whoever continues it, and
            # take the least recently used slot instead (the prefix can still be copied).
            slot = min(free, key=lambda s: s.last_used)
            reuse = _common(slot.cached, prompt, limit)
        source = max(self._slots, key=lambda s: _common(s.cached, prompt, limit))
        borrowed = _common(source.cached, prompt, limit)
        if borrowed > reuse and source is not slot:
            model.forget(slot.seq)
            model.copy_prefix(source.seq, slot.seq, borrowed)
            reuse = borrowed
        elif not model.forget(slot.seq, reuse):  # some caches cannot cut a sequence: redo
            model.forget(slot.seq)
            reuse = 0
        slot.cached = prompt[:reuse]
        slot.pending = prompt[reuse:]
        slot.job = job
        slot.sampler = sampler
        slot.next_token = None
        slot.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        slot.held = ""
        job.prompt_tokens = len(prompt)
        job.reused_tokens = reuse
        self.admitted(job)
        self.stats.prompt_tokens += len(prompt)
        self.stats.reused_prompt_tokens += reuse

    def _step(self) -> None:
        for slot in self._slots:
            if slot.job is not None and slot.job.cancelled.is_set():
                self._finish(slot, None)  # the client left: the slot is free at once
            elif slot.constraining is not None and slot.constraining.done():
                constrained, slot.constraining = slot.constraining, None
                self._take(slot, constrained.result())
        rows: list[tuple[int, int, int, bool]] = []
        sampled_at: list[tuple[_Slot, int]] = []  # (slot, batch row whose logits it samples)
        fed: list[tuple[_Slot, int]] = []  # (slot, prompt tokens it had in this batch)
        for slot in self._slots:
            if slot.job is not None and slot.next_token is not None:
                sampled_at.append((slot, len(rows)))
                rows.append((slot.next_token, len(slot.cached), slot.seq, True))
        budget = self._model.n_batch - len(rows)
        for slot in sorted(self._prefilling(), key=lambda s: s.job.arrived if s.job else 0):
            if budget <= 0:
                break
            chunk = slot.pending[:budget]
            start = len(slot.cached)
            done = len(chunk) == len(slot.pending)  # the prompt's last token: logits wanted
            rows.extend(
                (token, start + i, slot.seq, done and i == len(chunk) - 1)
                for i, token in enumerate(chunk)
            )
            fed.append((slot, len(chunk)))
            if done:
                sampled_at.append((slot, len(rows) - 1))
            budget -= len(chunk)
        if not rows:
            return
        code = self._model.decode(rows)
        if code != 0:
            raise RuntimeError(f"llama_decode failed ({code}) on a batch of {len(rows)}")
        self.stats.steps += 1
        self.stats.decoded_tokens += len(rows)
        self.stats.batch_sizes[len({row[2] for row in rows})] += 1
        # What was decoded is now in each sequence's KV.
        for slot in self._slots:
            if slot.job is not None and slot.next_token is not None:
                slot.cached.append(slot.next_token)
                slot.next_token = None
        for slot, count in fed:
            slot.cached.extend(slot.pending[:count])
            slot.pending = slot.pending[count:]
        for slot, row in sampled_at:
            self._sample(slot, row)
        self._measure()

    def _prefilling(self) -> list[_Slot]:
        return [slot for slot in self._slots if slot.job is not None and slot.pending]

    def _sample(self, slot: _Slot, index: int) -> None:
        job = slot.job
        assert job is not None
        assert slot.sampler is not None
        token = slot.sampler.sample(self._model.ctx, index)
        if token is None:  # the grammar refused the pick: it picks, off this thread
            logits = slot.sampler.logits(self._model.ctx, index)
            slot.constraining = self._grammar_thread.submit(slot.sampler.constrained, logits)
            slot.constraining.add_done_callback(lambda _: self.wake())
            return
        self._take(slot, token)

    def _take(self, slot: _Slot, token: int) -> None:
        """``token`` is the slot's next: emit its text, or finish."""
        job = slot.job
        assert job is not None
        model = self._model
        if model.is_end(token) and not job.ignore_eos:
            self._finish(slot, "stop")
            return
        job.completion_tokens += 1
        self.stats.generated_tokens += 1
        text = slot.held + slot.decoder.decode(model.piece(token))
        slot.held = ""
        cut = stop_at(text, job.stop)
        if cut is not None:
            if cut:
                job.emit("text", text[:cut])
            self._finish(slot, "stop")
            return
        keep = partial_stop(text, job.stop)
        if len(text) > keep:
            job.emit("text", text[: len(text) - keep])
        slot.held = text[len(text) - keep :] if keep else ""
        if job.completion_tokens >= job.max_tokens:
            self._finish(slot, "length")
        elif len(slot.cached) + 1 >= model.n_ctx_seq:
            self._finish(slot, "length")  # the sequence's context is full
        else:
            slot.next_token = token

    def _finish(self, slot: _Slot, reason: str | None) -> None:
        job, held = slot.job, slot.held
        assert job is not None
        _free_sampler(slot)
        slot.job = None
        slot.next_token = None
        slot.pending = []
        slot.last_used = time.monotonic()
        self.stats.running = sum(s.job is not None for s in self._slots)
        # The slot is released before the job hears it is done, so that whoever reads the
        # stats after the answer never counts it as still running.
        if reason is not None:
            if held:
                job.emit("text", held)
            job.emit("done", reason)

    def _measure(self) -> None:
        now = time.monotonic()
        self._window.append((now, self.stats.generated_tokens))
        while self._window and now - self._window[0][0] > 5.0:
            self._window.popleft()
        first_time, first_count = self._window[0]
        elapsed = now - first_time
        if elapsed > 0:
            self.stats.tokens_per_s = (self.stats.generated_tokens - first_count) / elapsed

    def _fail_all(self, exc: Exception) -> None:
        with self._wake:
            jobs = [slot.job for slot in self._slots if slot.job is not None]
            jobs.extend(self._waiting)
            self._waiting.clear()
        for job in jobs:
            _discard(job)
            if not job.cancelled.is_set():
                job.emit("error", exc)
        for slot in self._slots:
            _free_sampler(slot)
            slot.job = None
        self.stats.running = self.stats.waiting = 0


def _free_sampler(slot: _Slot) -> None:
    """Free the slot's sampler chain now, or once its grammar thread is done with it."""
    sampler, constraining = slot.sampler, slot.constraining
    slot.sampler = slot.constraining = None
    if sampler is None:
        return
    if constraining is None:
        sampler.free()
    else:  # run at once if it is already done
        constraining.add_done_callback(lambda _: sampler.free())


def _discard(job: Job) -> None:
    """Free what a job that never got (or no longer has) a slot still owns."""
    if job.grammar is not None:
        job.grammar.free()
        job.grammar = None


def _common(cached: list[int], prompt: list[int], limit: int) -> int:
    n = min(len(cached), limit)
    i = 0
    while i < n and cached[i] == prompt[i]:
        i += 1
    return i
