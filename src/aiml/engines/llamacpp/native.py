"""A GGUF model and a multi-sequence context on llama.cpp's C API (llama-cpp-python's
``llama_cpp.llama_cpp`` bindings, its public low-level module).

The high-level ``llama_cpp.Llama`` owns one context for one sequence; continuous batching
needs a context whose KV memory holds several sequences (``n_seq_max``) and batches that
mix them, so aiml drives the C API itself here: load, tokenize, detokenize, metadata,
per-sequence samplers. Everything in this module is blocking and runs on the scheduler's
own thread (a llama.cpp context is not thread-safe), except :class:`ParsedGrammar`, which
reads only the vocabulary and is built on a worker thread before its request joins the
batch (parsing a large grammar takes seconds nobody else should wait for), and
:meth:`SamplerChain.constrained`, which reads a copy of the logits and only its own chain.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp as llama
import numpy as np

from aiml.types import SamplingParams

__all__ = [
    "NativeModel",
    "ParsedGrammar",
    "SamplerChain",
    "Sampling",
    "kv_bytes_per_token",
    "read_metadata",
]

_backend_lock = threading.Lock()
_backend_ready = False
_log = logging.getLogger("aiml.llamacpp")
# ggml_log_level (ggml.h): 0 none, 1 debug, 2 info, 3 warn, 4 error, 5 continuation.
_LEVELS = {3: logging.WARNING, 4: logging.ERROR}


@llama.llama_log_callback  # type: ignore[untyped-decorator]
def _forward_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """llama.cpp's own log, into aiml's (warnings and errors; its load chatter dropped),
    instead of llama.cpp printing to the process's stderr."""
    if level in _LEVELS:
        _log.log(_LEVELS[level], "%s", text.decode("utf-8", errors="replace").rstrip())


def _init_backend() -> None:
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            llama.llama_backend_init()
            llama.llama_log_set(_forward_log, ctypes.c_void_p(0))
            _backend_ready = True


@dataclass(frozen=True, slots=True)
class Sampling:
    """One sequence's sampling, with llama-cpp-python's ``create_completion`` defaults so a
    request samples as it did on the one-at-a-time path."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int | None = None


class ParsedGrammar:
    """A GBNF grammar as llama.cpp's grammar sampler (``llama_sampler_init_grammar``), for
    one sequence. It reads only the model's vocabulary, so it is built off the scheduler's
    thread; a :class:`SamplerChain` given it owns it from then on."""

    def __init__(self, vocab: Any, grammar: str) -> None:
        self.sampler = llama.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
        if not self.sampler:
            self.sampler = None
            raise ValueError("llama.cpp could not parse the grammar")

    def free(self) -> None:
        if self.sampler is not None:
            llama.llama_sampler_free(self.sampler)
            self.sampler = None


class SamplerChain:
    """A sequence's own sampler chain, in the order ``Llama._init_sampler`` builds it."""

    #: How many recent tokens the repeat penalty looks at (``Llama``'s default).
    PENALTY_LAST_N = 64

    def __init__(
        self,
        sampling: Sampling,
        n_vocab: int,
        default_seed: int,
        grammar: ParsedGrammar | None = None,
    ) -> None:
        params = llama.llama_sampler_chain_default_params()
        self._chain = llama.llama_sampler_chain_init(params)
        add = lambda sampler: llama.llama_sampler_chain_add(self._chain, sampler)  # noqa: E731
        # Kept out of the chain: checking all ~50k tokens against a grammar costs far more
        # than the rest of sampling, so (as llama.cpp's own server does) the chain picks a
        # token first and the grammar checks that one; only a refused token makes the
        # grammar filter the whole vocabulary and the chain pick again.
        self._grammar = grammar.sampler if grammar is not None else None
        if grammar is not None:
            grammar.sampler = None  # this chain frees it
        self._n_vocab = n_vocab
        # The binding takes n_vocab first, as llama-cpp-python's own sampler passes it.
        add(
            llama.llama_sampler_init_penalties(
                n_vocab, self.PENALTY_LAST_N, sampling.repeat_penalty, 0.0, 0.0
            )
        )
        seed = default_seed if sampling.seed is None else sampling.seed & 0xFFFFFFFF
        if sampling.temperature < SamplingParams.GREEDY_BELOW:  # tiny ones overflow: greedy
            add(llama.llama_sampler_init_greedy())
        else:
            add(llama.llama_sampler_init_top_k(sampling.top_k))
            add(llama.llama_sampler_init_typical(1.0, 1))
            add(llama.llama_sampler_init_top_p(sampling.top_p, 1))
            add(llama.llama_sampler_init_min_p(sampling.min_p, 1))
            add(llama.llama_sampler_init_temp(sampling.temperature))
            add(llama.llama_sampler_init_dist(seed))

    def sample(self, ctx: Any, index: int) -> int | None:
        """Sample from the logits of batch row ``index`` (accepting the token too), or None
        when the grammar refused the chain's pick: then :meth:`constrained` picks, from a
        copy of that row (:meth:`logits`), off the scheduler's thread."""
        if self._grammar is None:
            return int(llama.llama_sampler_sample(self._chain, ctx, index))
        candidates, array = _candidates(self._row(ctx, index))
        llama.llama_sampler_apply(self._chain, ctypes.byref(array))
        token = int(candidates["id"][array.selected])
        if not self._allows(token):
            return None
        self._accept(token)
        return token

    def logits(self, ctx: Any, index: int) -> Any:
        """A copy of batch row ``index``'s logits (the next decode overwrites the context's)."""
        return np.array(self._row(ctx, index))

    def constrained(self, logits: Any) -> int:
        """The grammar filters the whole vocabulary, then the chain picks (and both accept).
        Its cost grows with the grammar's alternatives (seconds for a large enum); it touches
        only this chain, so it runs on a worker thread while the batch goes on."""
        assert self._grammar is not None
        candidates, array = _candidates(logits)
        llama.llama_sampler_apply(self._grammar, ctypes.byref(array))
        llama.llama_sampler_apply(self._chain, ctypes.byref(array))
        token = int(candidates["id"][array.selected])
        self._accept(token)
        return token

    def _row(self, ctx: Any, index: int) -> Any:
        return np.ctypeslib.as_array(llama.llama_get_logits_ith(ctx, index), (self._n_vocab,))

    def _accept(self, token: int) -> None:
        llama.llama_sampler_accept(self._grammar, token)
        llama.llama_sampler_accept(self._chain, token)

    def _allows(self, token: int) -> bool:
        one = (llama.llama_token_data * 1)(llama.llama_token_data(token, 1.0, 0.0))
        array = llama.llama_token_data_array(one, 1, -1, False)
        llama.llama_sampler_apply(self._grammar, ctypes.byref(array))
        return bool(np.isfinite(one[0].logit))

    def free(self) -> None:
        if self._chain is not None:
            llama.llama_sampler_free(self._chain)
            self._chain = None
        if self._grammar is not None:
            llama.llama_sampler_free(self._grammar)
            self._grammar = None


#: llama_token_data as numpy sees it (id, logit, p), to fill ~50k candidates without a loop.
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


def _candidates(logits: Any) -> tuple[Any, Any]:
    """Every token with its logit, as a llama_token_data_array over a numpy buffer (the
    buffer is returned too: it must outlive the array)."""
    candidates = np.empty(len(logits), dtype=_TOKEN_DATA)
    candidates["id"] = np.arange(len(logits), dtype=np.int32)
    candidates["logit"] = logits
    candidates["p"] = 0.0
    data = candidates.ctypes.data_as(ctypes.POINTER(llama.llama_token_data))
    return candidates, llama.llama_token_data_array(data, len(logits), -1, False)


class NativeModel:
    """Weights, vocabulary and a context with room for ``n_seq`` sequences of ``n_ctx_seq``
    tokens each (one KV memory shared by all, so a prompt prefix can be copied between
    sequences)."""

    def __init__(
        self, path: Path, *, n_seq: int, n_ctx_seq: int, n_batch: int, n_threads: int
    ) -> None:
        _init_backend()
        mparams = llama.llama_model_default_params()
        mparams.n_gpu_layers = 0
        model = llama.llama_model_load_from_file(str(path).encode(), mparams)
        if not model:
            raise ValueError(f"llama.cpp could not load {path.name}")
        self.model = model
        self.vocab = llama.llama_model_get_vocab(model)
        self.n_vocab = llama.llama_vocab_n_tokens(self.vocab)
        cparams = llama.llama_context_default_params()
        cparams.n_ctx = n_ctx_seq * n_seq
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_seq_max = n_seq
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        cparams.kv_unified = True
        cparams.no_perf = True
        ctx = llama.llama_init_from_model(model, cparams)
        if not ctx:
            llama.llama_model_free(model)
            raise ValueError(f"llama.cpp could not create a context for {path.name}")
        self.ctx = ctx
        self.memory = llama.llama_get_memory(ctx)
        self.n_seq = n_seq
        self.n_ctx_seq = int(llama.llama_n_ctx(ctx)) // n_seq  # llama.cpp may round n_ctx up
        self.n_batch = n_batch
        self.batch = llama.llama_batch_init(n_batch, 0, 1)
        self._piece = ctypes.create_string_buffer(256)
        self.closed = False

    # -- vocabulary --------------------------------------------------------------------

    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = False) -> list[int]:
        data = text.encode("utf-8")
        room = len(data) + 8
        tokens = (llama.llama_token * room)()
        count = llama.llama_tokenize(self.vocab, data, len(data), tokens, room, add_bos, special)
        if count < 0:  # room was too small: the negative count says how much is needed
            room = -count
            tokens = (llama.llama_token * room)()
            count = llama.llama_tokenize(
                self.vocab, data, len(data), tokens, room, add_bos, special
            )
        return list(tokens[:count])

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes of one token (a UTF-8 character may span several tokens)."""
        n = llama.llama_token_to_piece(self.vocab, token, self._piece, len(self._piece), 0, special)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = llama.llama_token_to_piece(self.vocab, token, buffer, -n, 0, special)
            return buffer.raw[:n]
        return self._piece.raw[:n]

    def fim_tokens(self) -> tuple[int, int, int] | None:
        """The prefix, suffix and middle tokens of fill-in-the-middle, if the model has them."""
        found = (
            llama.llama_vocab_fim_pre(self.vocab),
            llama.llama_vocab_fim_suf(self.vocab),
            llama.llama_vocab_fim_mid(self.vocab),
        )
        return None if min(found) < 0 else (int(found[0]), int(found[1]), int(found[2]))

    def is_end(self, token: int) -> bool:
        return bool(llama.llama_vocab_is_eog(self.vocab, token))

    @property
    def bos(self) -> int:
        return int(llama.llama_vocab_bos(self.vocab))

    @property
    def eos(self) -> int:
        return int(llama.llama_vocab_eos(self.vocab))

    def meta(self, key: str) -> str | None:
        """A GGUF metadata value as text, or ``None``."""
        size = 1 << 16
        buffer = ctypes.create_string_buffer(size)
        n = llama.llama_model_meta_val_str(self.model, key.encode(), buffer, size)
        if n < 0:
            return None
        if n >= size:  # a long value (a chat template): ask again with room for it
            buffer = ctypes.create_string_buffer(n + 1)
            llama.llama_model_meta_val_str(self.model, key.encode(), buffer, n + 1)
        return buffer.value.decode("utf-8", errors="replace")

    # -- KV memory and decoding --------------------------------------------------------

    def forget(self, seq: int, start: int = 0) -> bool:
        """Drop sequence ``seq``'s KV cells from position ``start`` on; ``False`` when the
        cache cannot cut a sequence there (a sliding-window cache, say)."""
        return bool(llama.llama_memory_seq_rm(self.memory, seq, start, -1))

    def copy_prefix(self, source: int, target: int, length: int) -> None:
        """Share ``source``'s first ``length`` positions with ``target`` (no recompute)."""
        llama.llama_memory_seq_cp(self.memory, source, target, 0, length)

    def decode(self, rows: list[tuple[int, int, int, bool]]) -> int:
        """One ``llama_decode`` over ``rows`` of (token, position, sequence, wants logits)."""
        batch = self.batch
        for i, (token, pos, seq, logits) in enumerate(rows):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits
        batch.n_tokens = len(rows)
        return int(llama.llama_decode(self.ctx, batch))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        llama.llama_batch_free(self.batch)
        llama.llama_free(self.ctx)
        llama.llama_model_free(self.model)


def read_metadata(path: Path) -> dict[str, str]:
    """A GGUF file's metadata, read without loading its weights (``vocab_only``)."""
    return read_gguf(path)[0]


def read_gguf(path: Path) -> tuple[dict[str, str], bool]:
    """A GGUF file's metadata, and whether its vocabulary has fill-in-the-middle tokens
    (llama.cpp finds them by their text when the metadata does not name them)."""
    _init_backend()
    params = llama.llama_model_default_params()
    params.vocab_only = True
    model = llama.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise ValueError(f"llama.cpp could not read {path.name}")
    try:
        vocab = llama.llama_model_get_vocab(model)
        fim = min(
            llama.llama_vocab_fim_pre(vocab),
            llama.llama_vocab_fim_suf(vocab),
            llama.llama_vocab_fim_mid(vocab),
        )
        meta: dict[str, str] = {}
        key = ctypes.create_string_buffer(512)
        value = ctypes.create_string_buffer(4096)
        for i in range(llama.llama_model_meta_count(model)):
            llama.llama_model_meta_key_by_index(model, i, key, len(key))
            n = llama.llama_model_meta_val_str_by_index(model, i, value, len(value))
            name = key.value.decode(errors="replace")
            if 0 <= n < len(value):
                meta[name] = value.value.decode(errors="replace")
            elif name == "tokenizer.chat_template":  # long, and needed: read it whole
                long_value = ctypes.create_string_buffer(n + 1)
                llama.llama_model_meta_val_str_by_index(model, i, long_value, n + 1)
                meta[name] = long_value.value.decode(errors="replace")
            # other long values (vocabularies, merges) are not needed
        return meta, fim >= 0
    finally:
        llama.llama_model_free(model)


def kv_bytes_per_token(meta: dict[str, str]) -> int:
    """KV cache bytes one token takes (f16 keys and values in every layer)."""
    arch = meta.get("general.architecture", "")

    def number(key: str, default: int) -> int:
        try:
            return int(meta.get(f"{arch}.{key}", default))
        except ValueError:
            return default

    layers = number("block_count", 0)
    heads = max(1, number("attention.head_count", 1))
    kv_heads = number("attention.head_count_kv", heads)
    embd = number("embedding_length", 0)
    key_len = number("attention.key_length", 0) or embd // heads
    value_len = number("attention.value_length", 0) or embd // heads
    return layers * kv_heads * (key_len + value_len) * 2
