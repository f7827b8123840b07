"""The choices of one completion request (``n`` of them, from ``best_of`` candidates), whole or streamed, with
their log-probabilities: events of the engine in, OpenAI bodies and chunks out.

``best_of`` candidates are ranked by their mean token log-probability (OpenAI: "the highest log probability per
token"), the best ``n`` returned, re-indexed from 0. Sampled tokens' log-probabilities come with every event
whenever they are asked for or ranking needs them (the engine reads them off the logits it sampled from).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..engines.core import GenEvent
from ..engines.logprobs import TokenLogprob
from .logprob_format import CompletionLogprobs, TokenTexts, chat_logprobs, merge
from .openai_format import CompletionFormat
from .tools import ToolPlan


@dataclass
class _Candidate:
    parts: list[str] = field(default_factory=list)
    reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None

    def mean_logprob(self) -> float:
        return sum(e.logprob for e in self.logprobs) / max(len(self.logprobs), 1)


class Choices:
    """``generated`` candidates of one request, of which ``n`` are answered.

    ``logprobs``: the answer carries them (completions: ``logprobs`` was given; chat: ``logprobs: true``);
    ``scored_prompt``: a completion's echoed prompt is scored too.
    """

    def __init__(self, fmt: CompletionFormat, texts: TokenTexts, prompt: list[int], n: int, generated: int,
                 logprobs: bool, scored_prompt: bool = False, tools: ToolPlan | None = None):
        self.fmt, self.texts, self.prompt = fmt, texts, prompt
        self.n, self.generated, self.logprobs, self.scored_prompt = n, generated, logprobs, scored_prompt
        self.candidates = [_Candidate() for _ in range(generated)]
        self._streamed = [CompletionLogprobs(texts) for _ in range(generated)]
        self._opened: set[int] = set()
        self.tools = tools  # a chat's tools in play: each choice's text is read for calls
        self._tool_out = [tools.output() for _ in range(generated)] if tools is not None else None

    # -- whole ----------------------------------------------------------------------------------------------
    def add(self, ev: GenEvent) -> None:
        c = self.candidates[ev.index]
        c.parts.append(ev.text)
        c.logprobs.extend(ev.logprobs or ())
        if ev.prompt_logprobs is not None:
            c.prompt_logprobs = ev.prompt_logprobs
        if ev.finish_reason:
            c.reason = ev.finish_reason

    def bodies(self) -> list[dict]:
        """The ``choices`` of the whole response: the best ``n`` candidates, indexed from 0."""
        ranked = self.candidates
        if self.generated > self.n:
            ranked = sorted(ranked, key=lambda c: -c.mean_logprob())[: self.n]
        if self.tools is not None:
            return [self._tool_choice(i, c) for i, c in enumerate(ranked)]
        return [self.fmt.choice(i, "".join(c.parts), c.reason, self._logprobs_of(c)) for i, c in enumerate(ranked)]

    def _tool_choice(self, index: int, c: _Candidate) -> dict:
        content, calls, reason = self.tools.output().message("".join(c.parts), c.reason)
        return self.fmt.choice(index, content, reason, self._logprobs_of(c), tool_calls=calls)

    def _logprobs_of(self, c: _Candidate) -> dict | None:
        if not self.logprobs:
            return None
        if self.fmt.chat:
            return chat_logprobs(self.texts, c.logprobs)
        lp = CompletionLogprobs(self.texts)
        head = lp.of_prompt(self.prompt, c.prompt_logprobs) if self.scored_prompt and c.prompt_logprobs else None
        return merge(head, lp.of(c.logprobs))

    # -- streamed (n == generated: best_of > n is refused for streams) -------------------------------------
    def opening(self) -> list[bytes]:
        """The chunks that go out before the engine says anything: each chat choice's assistant role, each
        echoed prompt (unless it is scored: then it goes with its scores, once the prefill has them)."""
        if not (self.fmt.chat or (self.fmt.echo and not self.scored_prompt)):
            return []
        self._opened.update(range(self.n))
        return [self.fmt.chunk(first=True, index=i) for i in range(self.n)]

    def chunks(self, ev: GenEvent) -> list[bytes]:
        i, out = ev.index, []
        if self.fmt.echo and i not in self._opened:
            self._opened.add(i)
            plp = (self._streamed[i].of_prompt(self.prompt, ev.prompt_logprobs)
                   if self.logprobs and ev.prompt_logprobs else None)
            out.append(self.fmt.chunk(first=True, index=i, logprobs=plp))
        lp = None
        if self.logprobs and ev.logprobs:
            lp = chat_logprobs(self.texts, ev.logprobs) if self.fmt.chat else self._streamed[i].of(ev.logprobs)
        if self._tool_out is not None:
            return out + self._tool_chunks(ev, lp)
        if ev.text or lp:
            out.append(self.fmt.chunk(ev.text, index=i, logprobs=lp))
        if ev.finish_reason:
            out.append(self.fmt.chunk(None, ev.finish_reason, index=i))
        return out

    def _tool_chunks(self, ev: GenEvent, lp: dict | None) -> list[bytes]:
        """A chat choice's text as content and tool-call deltas (the tokens' logprobs ride on the first)."""
        tool_out = self._tool_out[ev.index]
        deltas = tool_out.feed(ev.text)
        reason = None
        if ev.finish_reason:
            more, reason = tool_out.finish(ev.finish_reason)
            deltas += more
        if lp and not deltas:
            deltas = [{}]
        out = [self.fmt.chunk(index=ev.index, delta=d, logprobs=lp if k == 0 else None)
               for k, d in enumerate(deltas)]
        if reason:
            out.append(self.fmt.chunk(None, reason, index=ev.index))
        return out
