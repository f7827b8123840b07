"""The batching/scheduling core alone: no model, no HTTP."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from leaninfer.engines.core import (
    BusyWindow,
    EmbedItem,
    EmbedQueue,
    GenerationScheduler,
    GenSequence,
    Sampler,
    SamplingParams,
    TextTracker,
    form_embedding_batches,
    split_cost,
)

VOCAB = 50


class FakeRunner:
    """Deterministic logits: the next token is (sum of the sequence's tokens) % VOCAB; records call sizes."""

    def __init__(self, fail_on: int | None = None, poison: int | None = None):
        self.seqs: dict[int, list[int]] = {}
        self.calls: list[tuple[str, int]] = []
        self.fail_on = fail_on  # a prompt starting with it fails prefill
        self.poison = poison  # a sequence starting with it fails once it holds a generated token

    def _logits(self, ids):
        out = np.zeros((len(ids), VOCAB), np.float32)
        for r, s in enumerate(ids):
            out[r, sum(self.seqs[s]) % VOCAB] = 1.0
        return out

    def prefill(self, ids, prompts):
        if self.fail_on is not None and any(p[0] == self.fail_on for p in prompts):
            raise RuntimeError("bad prompt")
        if self.poison is not None and any(p[0] == self.poison and len(p) > 1 for p in prompts):
            raise RuntimeError("poisoned row")
        self.calls.append(("prefill", len(ids)))
        for s, p in zip(ids, prompts, strict=True):
            self.seqs[s] = list(p)
        return self._logits(ids)

    def decode(self, ids, tokens):
        self.calls.append(("decode", len(ids)))
        for s, t in zip(ids, tokens, strict=True):
            self.seqs[s].append(t)  # appended before the failure below: a half-done step, as a real cache
        if self.poison is not None and any(self.seqs[s][0] == self.poison for s in ids):
            raise RuntimeError("poisoned row")
        return self._logits(ids)

    def release(self, ids):
        self.calls.append(("release", len(ids)))
        for s in ids:
            self.seqs.pop(s)


def expected(prompt, n):
    seq, out = list(prompt), []
    for _ in range(n):
        t = sum(seq) % VOCAB
        out.append(t)
        seq.append(t)
    return out


def make(prompt, n, events=None, **kw):
    def on_event(seq, ev):
        if events is not None:
            events.append((seq.id, ev))
    return GenSequence(prompt=prompt, params=SamplingParams(max_tokens=n, temperature=0, **kw), on_event=on_event)


def run(s):
    while s.has_work():
        s.step()


def test_embedding_batches_respect_size_tokens_and_group_lengths():
    items = [EmbedItem([1] * n, enqueued_at=float(i)) for i, n in enumerate([5, 40, 6, 41, 7, 42, 100])]
    batches = form_embedding_batches(items, max_batch_size=3, max_batch_tokens=130)
    assert sorted(len(i.token_ids) for b in batches for i in b) == sorted(len(i.token_ids) for i in items)
    for b in batches:
        assert len(b) <= 3
        assert max(len(i.token_ids) for i in b) * len(b) <= 130 or len(b) == 1
    assert [len(i.token_ids) for i in batches[0]] == [5, 6, 7]  # the oldest item's batch first, short together
    assert form_embedding_batches([], 4, 10) == []


def test_split_cost_by_tokens():
    assert split_cost(2.0, [1, 3]) == [0.5, 1.5]
    assert split_cost(1.0, [0, 0]) == [0.5, 0.5]


def test_sampler_greedy_seeded_and_top_p():
    logits = np.array([0.0, 3.0, 1.0, 2.0])
    assert Sampler(SamplingParams(temperature=0)).sample(logits) == 1
    a = [Sampler(SamplingParams(temperature=1.0, seed=7)).sample(logits) for _ in range(5)]
    assert len(set(a)) == 1  # same seed, same choice
    draws = {Sampler(SamplingParams(temperature=1.0, top_p=0.5, seed=s)).sample(logits) for s in range(50)}
    assert draws == {1}  # token 1 alone holds more than half the mass
    draws = {Sampler(SamplingParams(temperature=2.0, seed=s)).sample(logits) for s in range(200)}
    assert draws == {0, 1, 2, 3}


def test_text_tracker_holds_back_stop_prefixes():
    t = TextTracker(lambda ids: "".join(chr(97 + i) for i in ids), stop=["cd"])
    assert t.add(0) == "a"
    assert t.add(1) == "b"
    assert t.add(2) == ""  # "c" might start "cd"
    assert t.add(3) == "" and t.stopped and t.text == "ab"
    t2 = TextTracker(lambda ids: "".join(chr(97 + i) for i in ids), stop=["cd"])
    out = "".join(t2.add(i) for i in (0, 2, 4))  # "c" then "e": the held "c" is released
    assert out == "ace" and not t2.stopped


def test_continuous_batching_joins_and_leaves_between_steps():
    r = FakeRunner()
    s = GenerationScheduler(r, max_batch_size=2, eos_token_id=None)
    a, b, c = make([1, 2], 3), make([3], 8), make([4, 4], 2)
    for q in (a, b, c):
        s.submit(q)
    run(s)
    assert a.output == expected([1, 2], 3) and b.output == expected([3], 8) and c.output == expected([4, 4], 2)
    assert [x.finish_reason for x in (a, b, c)] == ["length"] * 3
    # c joined as soon as a left (not when b finished): a prefill of 1 while b was still decoding
    i = r.calls.index(("prefill", 1))
    assert b.finished_at > c.started_at and i < len(r.calls) - 1
    assert max(n for k, n in r.calls if k == "decode") == 2  # never more than max_batch_size rows
    assert all(x.busy_s > 0 for x in (a, b, c))


def test_rows_finishing_in_one_step_leave_the_runner_in_one_release():
    # A release rebuilds a KV cache without the rows that left: 4 rows ending together pay one, not four.
    r = FakeRunner()
    s = GenerationScheduler(r, max_batch_size=4, eos_token_id=None)
    rows = [make([i + 1], 3) for i in range(4)]
    for q in rows:
        s.submit(q)
    run(s)
    assert [q.output for q in rows] == [expected([i + 1], 3) for i in range(4)]
    assert [c for c in r.calls if c[0] == "release"] == [("release", 4)] and r.seqs == {}


def test_cancel_frees_the_slot_and_failure_stays_local():
    events = []
    r = FakeRunner(fail_on=9)
    s = GenerationScheduler(r, max_batch_size=1, eos_token_id=None)
    a, b = make([1], 100, events), make([2], 2, events)
    s.submit(a)
    s.submit(b)
    s.step()
    s.step()
    s.cancel(a)
    run(s)
    assert a.finish_reason == "cancelled" and len(a.output) < 100
    assert b.output == expected([2], 2) and r.seqs == {}
    bad, good = make([9], 3), make([1], 3)
    s2 = GenerationScheduler(FakeRunner(fail_on=9), max_batch_size=4)
    s2.submit(good)
    s2.step()
    s2.submit(bad)
    run(s2)
    assert bad.finish_reason == "error" and good.output == expected([1], 3)


def test_eos_and_stop_strings_finish_with_stop():
    s = GenerationScheduler(FakeRunner(), max_batch_size=4, eos_token_id=expected([5], 2)[1])
    q = make([5], 10)
    s.submit(q)
    run(s)
    assert q.finish_reason == "stop" and len(q.output) == 2
    ign = make([5], 4, ignore_eos=True)
    s.submit(ign)
    run(s)
    assert ign.finish_reason == "length" and len(ign.output) == 4
    events = []
    st = GenSequence(prompt=[1], params=SamplingParams(max_tokens=10, temperature=0, stop=["3"]),
                     on_event=lambda seq, ev: events.append(ev), decode_text=lambda ids: "".join(map(str, ids)))
    s.submit(st)
    run(s)
    text = "".join(e.text for e in events)
    assert st.finish_reason == "stop" and "3" not in text and events[-1].finish_reason == "stop"


def test_max_seq_len_ends_with_length():
    s = GenerationScheduler(FakeRunner(), max_batch_size=4, max_seq_len=5)
    q = make([1, 2, 3], 10)
    s.submit(q)
    run(s)
    assert q.finish_reason == "length" and len(q.output) == 2


def test_a_bad_row_in_a_batched_prefill_fails_alone():
    events = []
    r = FakeRunner(fail_on=9)
    s = GenerationScheduler(r, max_batch_size=8)
    a, bad, c = make([1, 2], 4, events), make([9, 1], 4, events), make([3], 4, events)
    for q in (a, bad, c):
        s.submit(q)
    run(s)  # the three are admitted in one step: one prefill call holding the bad row
    assert bad.finish_reason == "error" and not bad.output
    assert [(i, ev.error) for i, ev in events if ev.error] == [(bad.id, "RuntimeError: bad prompt")]
    assert a.output == expected([1, 2], 4) and c.output == expected([3], 4)
    assert [x.finish_reason for x in (a, c)] == ["length"] * 2 and r.seqs == {}
    assert max(n for k, n in r.calls if k == "decode") == 2  # the survivors still decode together


def test_a_row_that_breaks_decode_fails_alone_and_the_runner_stays_consistent():
    events = []
    r = FakeRunner(poison=7)
    s = GenerationScheduler(r, max_batch_size=8)
    a, bad, c = make([1, 2], 5, events), make([7], 5, events), make([3], 5, events)
    for q in (a, bad, c):
        s.submit(q)
    run(s)
    assert bad.finish_reason == "error" and len(bad.output) == 1
    errors = [ev.error for i, ev in events if ev.finish_reason == "error"]
    assert errors == ["RuntimeError: poisoned row"] and all(i == bad.id for i, ev in events if ev.error)
    # the survivors' outputs are what they would be alone: the half-done step left nothing behind
    assert a.output == expected([1, 2], 5) and c.output == expected([3], 5) and r.seqs == {}
    assert a.busy_decode_s > 0 and s.batch_sizes[-1] == 2


def test_a_bad_prompt_batched_between_good_ones_on_a_real_model(tiny_gpt2):
    from leaninfer.models.runner import greedy_generate

    good = [list(tiny_gpt2.tokenizer("hello world")["input_ids"]), [5, 6, 7, 8, 9]]
    ref = greedy_generate(tiny_gpt2.runner(), good, 6)
    s = GenerationScheduler(tiny_gpt2.runner(), max_batch_size=8, max_seq_len=tiny_gpt2.max_seq_length)
    a, c = make(good[0], 6), make(good[1], 6)
    bad = make([1, tiny_gpt2.config.vocab_size + 3, 2], 6)  # past the embedding table: the model raises
    for q in (a, bad, c):
        s.submit(q)
    run(s)
    assert bad.finish_reason == "error" and not bad.output
    assert [a.output, c.output] == ref


class _AddMidway(deque):
    """Spans whose first iteration lets the engine thread call ``add`` midway, and waits for it to get through
    (a bounded wait: the lock may rightly keep it out until the reader is done)."""

    window: BusyWindow
    adder: threading.Thread | None = None

    def __iter__(self):
        it = super().__iter__()
        if self.adder is None:
            yield next(it)
            self.adder = threading.Thread(target=self.window.add, args=(0.5,))
            self.adder.start()
            self.adder.join(timeout=0.5)
        yield from it


def test_busy_window_read_while_the_engine_adds():
    # The interleaving that killed the engine thread: /metrics sums the spans while the engine appends one.
    # Unlocked, the append lands mid-iteration: "deque mutated during iteration".
    t = [0.0]
    w = BusyWindow(window_s=10.0, clock=lambda: t[0])
    t[0] = 1.0
    w.spans = _AddMidway(w.spans)
    w.spans.window = w
    w.add(0.25)
    w.add(0.25)
    assert w.fraction() == 0.5  # the span added midway waited for the reader: not half-counted
    w.spans.adder.join()
    assert w.fraction() == 1.0 and len(w.spans) == 3  # ... and is counted on the next read


def _serve_embeddings(queue: EmbedQueue, batch: int = 32, tokens: int = 16384) -> list[list[EmbedItem]]:
    """Drain the queue as the embeddings engine does: a window of 4 batches at a time, cut into batches."""
    order = []
    while queue.items:
        order += form_embedding_batches(queue.take(4 * batch), batch, tokens)
    return order


def test_a_small_embedding_request_is_not_queued_behind_a_huge_one():
    q = EmbedQueue()
    huge = [EmbedItem([7] * (50 + k % 200), request="huge", index=k, enqueued_at=0.0) for k in range(3000)]
    q.add(huge)
    q.add([EmbedItem([7] * 9, request="small", enqueued_at=1.0)])
    assert q.tokens == sum(len(i.token_ids) for i in huge) + 9 and len(q) == 2
    batches = _serve_embeddings(q)
    first = next(n for n, b in enumerate(batches) if any(i.request == "small" for i in b))
    assert first < 4, f"the one-line request ran in batch {first} of {len(batches)}"  # the first window
    assert len(batches) > 90  # ... of a request worth about a hundred batches
    assert sorted(i.index for b in batches for i in b if i.request == "huge") == list(range(3000))
    assert q.tokens == 0 and q.items == 0 and len(q) == 0


def test_embedding_queue_deals_round_robin_and_forgets_cancelled_requests():
    q = EmbedQueue()
    for name, n in (("a", 5), ("b", 1), ("c", 3)):
        q.add([EmbedItem([1, 2], request=name, index=k) for k in range(n)])
    assert [i.request for i in q.take(6)] == ["a", "b", "c", "a", "c", "a"]
    assert q.tokens == 2 * 3 and len(q) == 2
    assert len(q.discard("c")) == 1 and q.discard("c") == []
    assert q.tokens == 2 * 2 and [i.request for i in q.take_all()] == ["a", "a"]


def test_sampler_bias_penalties_tiny_temperature_and_signed_seed():
    logits = np.array([0.0, 3.0, 1.0, 2.0], np.float32)
    assert Sampler(SamplingParams(temperature=0, logit_bias={0: 100})).sample(logits) == 0
    s = Sampler(SamplingParams(temperature=0, frequency_penalty=2.0))
    assert [s.sample(logits) for _ in range(4)] == [1, 3, 1, 2]  # each pick lowers that token by 2 per use
    s = Sampler(SamplingParams(temperature=0, presence_penalty=2.0))
    assert [s.sample(logits) for _ in range(3)] == [1, 3, 1]  # once present, a token is lowered once
    # a subnormal temperature overflowed the division; it now tends to greedy, as it should
    assert {Sampler(SamplingParams(temperature=5e-324, top_p=0.5, seed=k)).sample(logits) for k in range(5)} == {1}
    a = [Sampler(SamplingParams(temperature=2.0, seed=-7)).sample(logits) for _ in range(3)]
    assert len(set(a)) == 1  # a negative seed is a seed like any other


class SpellGrammar:
    """A fake grammar that spells ``word`` token by token; EOS is allowed only once it is spelt (``accept_at``
    tokens in: complete but open, so EOS or the rest), and it is done after the whole word."""

    def __init__(self, word, eos, accept_at=None):
        self.word, self.eos, self.accept_at = list(word), eos, accept_at

    def matcher(self):
        g = self

        class M:
            pos = 0

            def allowed(self):
                mask = np.zeros(VOCAB, bool)
                if self.pos < len(g.word):
                    mask[g.word[self.pos]] = True
                if g.accept_at is not None and self.pos >= g.accept_at:
                    mask[g.eos] = True
                return mask

            def advance(self, tok):
                assert self.allowed()[tok], tok
                self.pos += 1

            def done(self):
                return self.pos >= len(g.word)
        return M()

    def decode(self, ids):
        return "".join(map(str, ids))


def test_grammar_masks_rows_of_a_mixed_batch_and_ends_them():
    """Constrained rows follow their grammar and finish "stop" when it completes (or "length" when cut),
    never with EOS before it accepts; a free row in the same decode steps keeps its own greedy tokens."""
    eos = 0
    r = FakeRunner()
    s = GenerationScheduler(r, max_batch_size=8, eos_token_id=eos)
    free = make([1, 2], 6)
    spelt = make([3], 20, grammar=SpellGrammar([7, 8, 9], eos))
    cut = make([4], 2, grammar=SpellGrammar([7, 8, 9], eos))
    # EOS is allowed from the 3rd token on, and ties with the word's 13 there (the fake's logits are one-hot
    # elsewhere): greedy takes it, and it ends the row even with ignore_eos, since the grammar accepted
    early = make([5], 20, grammar=SpellGrammar([11, 12, 13, 14], eos, accept_at=2), ignore_eos=True)
    for q in (free, spelt, cut, early):
        s.submit(q)
    run(s)
    assert max(r.calls[i][1] for i in range(len(r.calls)) if r.calls[i][0] == "decode") >= 3  # one batch
    assert free.output == expected([1, 2], 6) and free.finish_reason == "length"
    assert spelt.output == [7, 8, 9] and spelt.finish_reason == "stop"
    assert cut.output == [7, 8] and cut.finish_reason == "length"
    assert early.finish_reason == "stop" and early.output == [11, 12, eos]


def test_sampler_mask_beats_logit_bias_and_sampling():
    g = SpellGrammar([3], eos=0)
    for params in (SamplingParams(temperature=0, logit_bias={5: 100.0}),
                   SamplingParams(temperature=2.0, seed=1, grammar=None)):
        params.grammar = g
        logits = np.zeros(VOCAB)
        logits[5] = 50.0
        assert Sampler(params).sample(logits) == 3
