"""Approximate tokenisation and the chained block hashes the simulated prefix cache is keyed by.

No real tokenizer is loaded: a model server's behaviour under load depends on how many tokens a prompt has and
which of them it shares with earlier prompts, not on their exact ids. A token here is a run of up to four word
characters or one punctuation character, with the whitespace after it attached. That gives about 1.3 tokens
per English word, close to Llama-3's ratio, and two properties the cache model relies on: the tokens of a text
concatenate back to the text exactly, and the tokens of `a + b` are the tokens of `a` followed by those of `b`
whenever `a` ends with whitespace (so a chat's next turn, whose template puts a newline after every message,
starts with the previous request's tokens, as with a real chat template).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

# Every character is covered: whitespace at the very start, then pieces that each take the whitespace after them.
_TOKEN = re.compile(r"\A\s+|(?:\w{1,4}|[^\w\s])\s*")

_ROOT_PREFIX = b"xds-server-vllm-sim\0"


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text)


def chat_prompt(messages: Iterable[tuple[str, str]]) -> str:
    """A chat template in the style of instruction-tuned models: role markers, contents, and the assistant's cue.

    An assistant turn renders as the cue plus the text the model generated after it, so a conversation's next
    request repeats the previous request's prompt and answer token for token (all but the answer's last token,
    which now carries the newline) and hits the cache for the blocks they fill.
    """
    rendered = [f"<|{role}|>\n{content}\n" for role, content in messages]
    rendered.append("<|assistant|>\n")
    return "".join(rendered)


def root_hash(adapter: str | None) -> int:
    """Where the hash chain starts: per LoRA adapter, since an adapter changes every layer's keys and values."""
    return _digest(_ROOT_PREFIX + (adapter or "").encode())


def block_hashes(tokens: Sequence[str], block_size: int, root: int) -> list[int]:
    """One hash per full block, each over the block's tokens and the previous block's hash.

    Chaining makes a block's hash stand for the whole prefix up to its end, so equal text after a different
    prefix never matches, as in vLLM's prefix caching. A trailing partial block has no hash: it cannot be shared.
    """
    hashes: list[int] = []
    previous = root
    for start in range(0, len(tokens) - block_size + 1, block_size):
        block = "\0".join(tokens[start : start + block_size]).encode()
        previous = _digest(previous.to_bytes(8, "little") + block)
        hashes.append(previous)
    return hashes


def _digest(data: bytes) -> int:
    # blake2b rather than hash(): stable across processes and runs (hash() of str is salted per process).
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")
