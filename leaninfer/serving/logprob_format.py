"""Token log-probabilities in OpenAI's two shapes: the legacy completions object (``tokens``,
``token_logprobs``, ``top_logprobs``, ``text_offset``) and the chat ``logprobs.content`` list.

A token's text is its id decoded alone (what vLLM shows); ``text_offset`` counts the characters of those
texts from the start of the choice's text (the echoed prompt's tokens first). In the completions shape each
position's ``top_logprobs`` holds the ``logprobs`` most likely tokens and the chosen token itself (as vLLM
does), so the chosen token's entry is never missing; the chat shape holds exactly ``top_logprobs`` alternatives.
A prompt's first token has nothing before it: ``null`` log-probability and ``null`` alternatives.
"""

from __future__ import annotations

import weakref

from ..engines.logprobs import TokenLogprob


class TokenTexts:
    """Token id -> its text decoded alone, remembered (the same ids come back at every position)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._texts: dict[int, str] = {}

    def __call__(self, token: int) -> str:
        text = self._texts.get(token)
        if text is None:
            text = self._texts[token] = self.tokenizer.decode([token])
        return text


_TEXTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> its TokenTexts


def token_texts(tokenizer) -> TokenTexts:
    """The one :class:`TokenTexts` of ``tokenizer`` (its memory shared by every request)."""
    texts = _TEXTS.get(tokenizer)
    if texts is None:
        texts = _TEXTS[tokenizer] = TokenTexts(tokenizer)
    return texts


class CompletionLogprobs:
    """One choice's ``logprobs`` object of ``/v1/completions``, built as its tokens come (whole or streamed)."""

    def __init__(self, texts: TokenTexts):
        self.texts = texts
        self.offset = 0  # characters of the token texts so far

    def of(self, entries: list[TokenLogprob | None]) -> dict:
        """The object for these tokens (the next ones of this choice): in a stream, what one chunk carries."""
        out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for e in entries:
            if e is None:  # the prompt's first token: the caller passes its id through ``first``
                continue
            text = self.texts(e.token)
            out["tokens"].append(text)
            out["token_logprobs"].append(e.logprob)
            top = {self.texts(t): lp for t, lp in e.top}
            top.setdefault(text, e.logprob)
            out["top_logprobs"].append(top)
            out["text_offset"].append(self.offset)
            self.offset += len(text)
        return out

    def of_prompt(self, prompt: list[int], entries: list[TokenLogprob | None]) -> dict:
        """The echoed prompt's tokens: the first with ``null`` figures, the others scored."""
        first = self.texts(prompt[0])
        out = {"tokens": [first], "token_logprobs": [None], "top_logprobs": [None], "text_offset": [self.offset]}
        self.offset += len(first)
        rest = self.of(entries[1:])
        for k in out:
            out[k].extend(rest[k])
        return out


def merge(a: dict | None, b: dict) -> dict:
    """Two completions ``logprobs`` objects of one choice, one after the other."""
    if a is None:
        return b
    return {k: a[k] + b[k] for k in a}


def chat_logprobs(texts: TokenTexts, entries: list[TokenLogprob]) -> dict:
    """The chat ``logprobs`` object for these tokens."""
    def item(token: int, logprob: float) -> dict:
        text = texts(token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**item(e.token, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]}
                        for e in entries], "refusal": None}
