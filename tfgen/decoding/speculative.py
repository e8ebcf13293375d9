"""Speculative decoding inside the one compiled loop: propose k tokens, check them in one pass.

At batch 1 every decoding step reads every weight once, so a step costs the same whether it scores
one position or a few. Each iteration here proposes up to k tokens per row (a `PromptLookup` of
the row's own text, or a `DraftModel`), runs the model once over the row's last token and its
proposals (k + 1 positions, written to the cache at the row's own slots) and keeps the longest
prefix of proposals the model itself would have chosen, plus the model's token after it.

Exactness. The k + 1 positions are scored as rows of their own through `sampling.choose`: the
processors see each position's history (accepted proposals included) and its step, exactly as
plain decoding would, and a sampled row draws with the noise keyed by (row seed, step). A proposal
is accepted when it equals the token so chosen. For greedy rows that is plain greedy's token; for
sampled rows it is the accept/reject rule of speculative sampling for a proposal that puts all its
probability on one token (both proposers do): accepted with probability p(d), and otherwise the
token comes from p with d removed and renormalised, the residual distribution. So the output is
token-identical to plain decoding with the same seeds (up to float rounding of a wider pass),
greedy and sampled alike.

Rows move by their own accepted counts: each row writes the cache at its own slot (`start` [B]:
one scatter of B * kv_heads * (k + 1) rows, which XLA performs in place, where plain decoding uses
one dynamic update slice) and its attention bias has its own causal edge. Slots past a row's
accepted tokens hold rejected proposals until the next pass overwrites them; the causal mask hides
them meanwhile, so the key mask simply marks every generated slot. No cache is copied.

Static shapes: the pass width is one of a few (`draft_widths`), chosen per iteration by
`tf.switch_case`; an iteration without proposals is a plain one-token pass, chosen for B rows (not
B * (k + 1)). The width is the one that commits the most tokens per unit of cost (`worth_it`):
each row's recent acceptance (`acceptance`) gives the tokens it would commit on average, and a
pass's cost grows with its positions (`pass_cost`), so at batch 4 one row's weak proposal does not
widen the pass for all four, and a row accepting nearly everything gets the widest pass. k adapts
per row as well: it doubles
after a fully accepted proposal and falls to the accepted count otherwise, to 0 (no proposals)
after a rejected one; a row at 0 tries one token again after `RETRY` iterations, and each retry
that fails doubles that wait (up to `MAX_RETRY`; an accepted token resets it). Ungrounded text,
where proposals keep failing, thus runs at nearly plain decoding's cost.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import tensorflow as tf

from tfgen.config import ROW_FIELDS
from tfgen.decoding import sampling, steps, stops

MAX_TOKENS = 16  # the largest k accepted (`check_num_tokens`)
DEFAULT_TOKENS = 8  # k when none is given
RETRY = 8  # iterations a row whose k fell to 0 waits before proposing one token again
MAX_RETRY = 128  # the longest such wait, after retries that keep failing
# A pass over M positions (batch rows times positions each) costs M ** PASS_EXPONENT one-position
# passes (`pass_cost`). Fitted to batch 1 on the 2-core development machine (SmolLM2,
# `benchmarks/pass_cost.py`: 1 x 5 positions 2.0-2.4x, 1 x 9 2.5-2.7x; the model says 2.1x and
# 2.7x); at batch 4 it overstates a wide pass (4 x 5 measured 1.4-1.6x of 4 x 1, 4 x 9 1.8-1.9x;
# the model says 2.1x and 2.7x), so there it errs towards plain passes. 0: every pass costs the
# same, and every proposal is checked.
PASS_EXPONENT = 0.45
# Per-row acceptance estimate (`acceptance`): counts of accepted and rejected proposal tokens, each
# iteration's added to DECAY times the old ones (so a row's estimate returns to the prior while it
# proposes nothing), and a prior of PRIOR_HITS accepted and PRIOR_MISSES rejected tokens.
DECAY = 0.75
PRIOR_HITS, PRIOR_MISSES = 2.0, 1.0


def check_num_tokens(num_tokens) -> int:
    """num_speculative_tokens after its check: an integer in 1..MAX_TOKENS."""
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or not 1 <= num_tokens <= MAX_TOKENS:
        raise ValueError(f"num_speculative_tokens must be an integer in 1..{MAX_TOKENS}, got {num_tokens!r}")
    return num_tokens


def draft_widths(num_tokens: int) -> tuple:
    """The pass widths (proposals per row) compiled for k = num_tokens: 0 (a plain step), 1 (a
    row retrying), k // 2 and k. Each is one copy of the model's forward pass in the program."""
    return tuple(sorted({0, 1, max(1, num_tokens // 2), num_tokens}))


class PromptLookup(NamedTuple):
    """Propose the tokens that followed the latest earlier occurrence of the row's last n tokens
    in its own prompt and output (prompt lookup decoding), for the largest n in min_ngram..max_ngram
    that occurs. No model: a few comparisons over the token buffer. One-token matches are left
    out by default: in open-ended text they are frequent and nearly always wrong."""

    max_ngram: int = 3
    min_ngram: int = 2
    pass_exponent: float = PASS_EXPONENT
    name = "prompt_lookup"

    def init(self, lm, input_ids, attention_mask, max_length):
        return {}

    def offer(self, state, num_tokens):
        """(how many tokens the row can propose [B], the proposals [B, num_tokens])."""
        tokens = state["tokens"]
        length = tf.shape(tokens)[1]
        end = state["prompt_length"] + state["count"] - 1  # [B], the slot of the row's last token
        first = state["prompt_length"] - state["real_length"]  # [B], its first real slot
        slots = tf.range(length)[None, :]
        best_start = tf.fill(tf.shape(end), -1)  # where the continuation begins, -1: none yet
        for n in range(self.min_ngram, self.max_ngram + 1):  # a longer match overrides a shorter one
            match = (slots >= first[:, None]) & (slots + n <= end[:, None]) & (end - n + 1 >= first)[:, None]
            for i in range(n):
                window = tf.gather(tokens, tf.minimum(slots[0] + i, length - 1), axis=1)  # [B, L]
                suffix = tf.gather(tokens, tf.maximum(end - n + 1 + i, 0)[:, None], batch_dims=1)  # [B, 1]
                match &= tf.equal(window, suffix)
            latest = tf.reduce_max(tf.where(match, slots, -1), axis=1)  # [B]
            best_start = tf.where(latest >= 0, latest + n, best_start)
        found = best_start >= 0
        available = tf.where(found, tf.minimum(end + 1 - best_start, num_tokens), 0)
        index = tf.clip_by_value(best_start[:, None] + tf.range(num_tokens)[None, :], 0, length - 1)
        return available, tf.gather(tokens, index, batch_dims=1)

    def propose(self, state, offered, width):
        return offered[:, :width], state


class DraftModel(NamedTuple):
    """Propose the greedy tokens of a smaller model with the same vocabulary (`lm`, a `CausalLM`),
    which keeps its own cache inside the loop, at the same slots as the target's.

    Each iteration first feeds it the row's last two tokens (the one before may be a proposal it
    never ran, when all were accepted), then its own proposals one at a time. It runs even in
    iterations without proposals, with those two tokens only, so its cache stays whole.
    """

    lm: object
    pass_exponent: float = PASS_EXPONENT
    name = "draft"

    def init(self, lm, input_ids, attention_mask, max_length):
        _, cache, _, _ = steps.prefill(self.lm, input_ids, attention_mask, max_length)
        return {"draft_cache": cache}

    def offer(self, state, num_tokens):
        return tf.fill(tf.shape(state["count"]), num_tokens), None

    def propose(self, state, offered, width):
        slot = state["prompt_length"] + state["count"] - 1  # [B], the slot of the last token
        offset = state["prompt_length"] - state["real_length"]  # slot - position, per row
        pair = tf.stack([tf.gather(state["tokens"], slot - 1, batch_dims=1), state["last"]], axis=1)
        positions = tf.stack([slot - 1, slot], 1) - offset[:, None]
        logits, cache = self.lm.forward(pair, positions, _start(slot - 1), state["key_mask"],
                                        state["draft_cache"])
        drafts = []
        for index in range(width):
            token = tf.argmax(logits, axis=-1, output_type=tf.int32)
            drafts.append(token)
            if index + 1 < width:
                slots = slot + index + 1
                positions = tf.minimum(slots - offset, self.lm.max_positions - 1)  # as in `_verify`
                logits, cache = self.lm.forward(token[:, None], positions[:, None], _start(slots),
                                                state["key_mask"], cache)
        proposals = tf.stack(drafts, axis=1) if drafts else tf.zeros([tf.shape(slot)[0], 0], tf.int32)
        return proposals, dict(state, draft_cache=cache)


def _start(slots):
    """The cache write's start: one slot per row [B], or at batch 1 (a static shape) the scalar,
    so that the write is plain decoding's in-place dynamic update slice, not a scatter."""
    return slots[0] if slots.shape[0] == 1 else slots


def loop(lm, input_ids, attention_mask, params, num_steps, proposer, num_tokens, top_logprobs=0,
         raw_logprobs=False):
    """Generate up to `num_steps` tokens per row with speculation, in one loop.

    Args:
        lm, input_ids, attention_mask, params, num_steps, top_logprobs, raw_logprobs: as in
            `sampling.loop`.
        proposer: a `PromptLookup` or `DraftModel`.
        num_tokens: static k, the most tokens a row proposes per pass (1..MAX_TOKENS).

    Returns:
        `sampling.loop`'s outputs, plus forward_passes int32 [B] (target passes while the row ran,
        the prefill included), proposed and accepted int32 [B] (proposal tokens scored / kept).
    """
    state = _init_state(lm, input_ids, attention_mask, params, num_steps, proposer, num_tokens, top_logprobs,
                        raw_logprobs)
    state = tf.while_loop(
        lambda s: ~tf.reduce_all(s["finished"]),
        lambda s: [_iterate(lm, s, params, proposer, num_tokens)],
        [state],
        maximum_iterations=num_steps - 1,
    )[0]
    new_tokens = state["tokens"][:, state["prompt_length"]:state["prompt_length"] + num_steps]
    limit = tf.minimum(params.max_new_tokens, state["count"])
    return dict(
        {name: state[name] for name in sampling._TOP + sampling._RAW if name in state},
        new_tokens=new_tokens,
        log_probs=state["log_probs"],
        num_generated=steps.generated_lengths(new_tokens, params.eos_mask, limit, params.ignore_eos),
        forward_passes=state["passes"],
        proposed=state["proposed"],
        accepted=state["accepted"],
    )


def _init_state(lm, input_ids, attention_mask, params, num_steps, proposer, num_tokens, top_logprobs,
                raw_logprobs):
    """Prefill (target and proposer) and choose each row's first token, as `sampling.init_state`.

    The token buffer and the caches hold num_tokens slots more than plain decoding's, for the
    proposals of the last pass.
    """
    first = sampling.init_state(lm, input_ids, attention_mask, params, num_steps + num_tokens, top_logprobs,
                                raw_logprobs)
    batch, prompt_length = tf.shape(input_ids)[0], tf.shape(input_ids)[1]
    max_length = prompt_length + num_steps + num_tokens
    generated = tf.range(max_length)[None, :] >= prompt_length
    state = dict(
        tokens=first["tokens"],
        finished=first["finished"],
        last=first["last"],
        count=tf.ones([batch], tf.int32),
        prompt_length=prompt_length,
        real_length=first["positions"],
        key_mask=first["key_mask"] | generated,  # causality hides the slots not yet written
        cache=first["cache"],
        passes=tf.ones([batch], tf.int32),
        proposed=tf.zeros([batch], tf.int32),
        accepted=tf.zeros([batch], tf.int32),
        k=tf.fill([batch], num_tokens),
        idle=tf.zeros([batch], tf.int32),
        wait=tf.fill([batch], RETRY),
        hits=tf.zeros([batch], tf.float32),
        misses=tf.zeros([batch], tf.float32),
    )
    for name in ("log_probs",) + sampling._TOP + sampling._RAW:  # the per-step columns, num_steps wide
        if name in first:
            state[name] = first[name][:, :num_steps]
    for name in ("stop_window",):
        if name in first:
            state[name] = first[name]
    state.update(proposer.init(lm, input_ids, attention_mask, max_length))
    return state


def _iterate(lm, state, params, proposer, num_tokens):
    """One pass: propose, score the proposals and the token after them, keep what matches.

    Only the proposals and the model's pass depend on the width (`tf.switch_case` over
    `draft_widths`); choosing and committing run once, on num_tokens + 1 positions per row, so
    the program holds one copy of the processors."""
    running = ~state["finished"]
    budget = params.max_new_tokens - state["count"] - 1  # proposals past a row's limit are wasted
    available, offered = proposer.offer(state, num_tokens)
    wanted = tf.where(running, tf.maximum(tf.minimum(tf.minimum(state["k"], available), budget), 0), 0)
    widths = draft_widths(num_tokens)[1:]
    wanted = tf.minimum(wanted, worth_it(wanted, running, acceptance(state), widths, proposer.pass_exponent))
    most = tf.reduce_max(wanted)

    def plain():  # nobody proposes: a one-token pass, chosen for B rows only
        logits, proposals, scored = _score(lm, state, proposer, offered, 0, 0)
        return _verify(lm, scored, params, logits, proposals, wanted)

    def speculate():
        branch = tf.searchsorted(tf.constant(widths, tf.int32), tf.reshape(most, [1]))[0]
        branches = [lambda width=width: _score(lm, state, proposer, offered, width, num_tokens)
                    for width in widths]
        logits, proposals, scored = tf.switch_case(branch, branches)
        return _verify(lm, scored, params, logits, proposals, wanted)

    state, accepted = tf.cond(most > 0, speculate, plain)
    return _adapt(state, running, wanted, accepted, num_tokens)


def _score(lm, state, proposer, offered, width, num_tokens):
    """`width` proposals per row and the model's pass over them and the row's last token, at the
    row's own slots. Returns (logits [B, num_tokens + 1, V], proposals [B, num_tokens], state),
    both padded past `width` (padding is never accepted: `wanted` <= width)."""
    proposals, state = proposer.propose(state, offered, width)  # [B, width]
    count = state["count"]
    slot = state["prompt_length"] + count - 1  # [B], where the row's last token goes
    ids = tf.concat([state["last"][:, None], proposals], axis=1)  # [B, width + 1]
    # Positions past the model's context only occur past a row's max_new_tokens, never accepted.
    positions = tf.minimum((state["real_length"] + count - 1)[:, None] + tf.range(width + 1)[None, :],
                           lm.max_positions - 1)
    logits, cache = lm.forward(ids, positions, _start(slot), state["key_mask"], state["cache"],
                               all_logits=True)
    pad = num_tokens - width
    return (tf.pad(logits, [[0, 0], [0, pad], [0, 0]]), tf.pad(proposals, [[0, 0], [0, pad]]),
            dict(state, cache=cache, passes=state["passes"] + tf.cast(~state["finished"], tf.int32)))


def _verify(lm, state, params, logits, proposals, wanted):
    """Choose the token at each scored position as plain decoding would, keep the longest prefix
    of proposals equal to them and commit it plus the next chosen token; returns (state, accepted
    [B])."""
    batch, width = tf.shape(proposals)[0], proposals.shape[1]
    prompt_length, count = state["prompt_length"], state["count"]
    offsets = tf.range(width + 1)[None, :]
    # The proposals in the buffer after the row's text: position j's history (`choose` ignores
    # slots from its cur_len on).
    tokens = state["tokens"]
    history = tokens
    if width:
        after = tf.range(tf.shape(tokens)[1])[None, :] - (prompt_length + count)[:, None]  # [B, L]
        placed = tf.gather(proposals, tf.clip_by_value(after, 0, width - 1), batch_dims=1)
        history = tf.where((after >= 0) & (after < width), placed, tokens)
    # Row b's position j is row b * (width + 1) + j of a batch, at plain decoding's step count + j.
    repeat = width + 1
    per_row = {field.name: tf.repeat(getattr(params, field.name), repeat, axis=0) for field in ROW_FIELDS}
    view = dict(tokens=tf.repeat(history, repeat, axis=0), prompt_length=prompt_length,
                step=tf.reshape(count[:, None] + offsets, [-1]))
    view.update({name: state[name] for name in ("top_ids", "raw_log_probs") if name in state})
    chosen, columns = sampling.choose(tf.reshape(logits, [batch * repeat, -1]), view,
                                      params._replace(stops=None, **per_row), lm.vocab_size)
    chosen = tf.reshape(chosen, [batch, repeat])
    columns = {name: tf.reshape(value, tf.concat([[batch, repeat], tf.shape(value)[1:]], 0))
               for name, value in columns.items()}
    matched = tf.equal(chosen[:, :width], proposals) & (offsets[:, :width] < wanted[:, None])
    accepted = tf.reduce_sum(tf.math.cumprod(tf.cast(matched, tf.int32), axis=1), axis=1)  # [B]
    return _commit(state, chosen, columns, accepted, params), accepted


def _commit(state, chosen, columns, accepted, params):
    """Write each row's first accepted + 1 chosen tokens [B, W] one by one, as plain decoding's
    `record` would, stopping a row at EOS, its max_new_tokens or a stop string."""
    num_steps = tf.shape(state["log_probs"])[1]
    finished, count = state["finished"], state["count"]
    for j in range(chosen.shape[1]):
        alive = ~finished & (j <= accepted)
        token = chosen[:, j]
        slot = state["prompt_length"] + count
        write = (tf.range(tf.shape(state["tokens"])[1])[None, :] == slot[:, None]) & alive[:, None]
        state["tokens"] = tf.where(write, token[:, None], state["tokens"])
        for name, value in columns.items():
            column = tf.where(alive, count, num_steps)  # past the end: nothing written
            state[name] = steps.write_column(state[name], column, value[:, j], axis=1)
        done = steps.ends_row(token, params.eos_mask, params.ignore_eos) | \
            (count + 1 >= tf.minimum(params.max_new_tokens, num_steps))
        if params.stops is not None:
            tables = params.stops
            window = stops.append(state["stop_window"], token, tables.token_bytes, tables.token_lengths)
            done |= stops.matches(window, tables.stop_bytes, tables.stop_lengths)
            state["stop_window"] = tf.where(alive[:, None], window, state["stop_window"])
        finished = finished | (alive & done)
        count = count + tf.cast(alive, tf.int32)
    last = tf.gather(chosen, tf.minimum(accepted, chosen.shape[1] - 1)[:, None], batch_dims=1)[:, 0]
    return dict(state, finished=finished, count=count, last=last)


def _adapt(state, running, wanted, accepted, num_tokens):
    """The per-row k after a pass, and the proposal counters (`loop`'s module notes)."""
    k, idle, wait = state["k"], state["idle"], state["wait"]
    tried = running & (wanted > 0)
    full = tried & (accepted >= wanted)
    k = tf.where(full, tf.minimum(2 * tf.maximum(k, 1), num_tokens), k)
    k = tf.where(tried & ~full, accepted, k)  # 0 after a rejected proposal: wait, then retry one
    # A retry (one token after a wait) that fails doubles the next wait; an accepted token resets it.
    wait = tf.where(tried & (accepted > 0), RETRY, wait)
    wait = tf.where(tried & (accepted == 0) & (wanted == 1), tf.minimum(2 * wait, MAX_RETRY), wait)
    idle = tf.where(running & (k == 0), idle + 1, 0)
    k = tf.where(idle >= wait, 1, k)
    idle = tf.where(idle >= wait, 0, idle)
    hits = DECAY * state["hits"] + tf.cast(tf.where(tried, accepted, 0), tf.float32)
    misses = DECAY * state["misses"] + tf.cast(tried & (accepted < wanted), tf.float32)
    return dict(state, k=k, idle=idle, wait=wait, hits=hits, misses=misses,
                proposed=state["proposed"] + tf.where(tried, wanted, 0),
                accepted=state["accepted"] + tf.where(tried, accepted, 0))


def pass_cost(positions, exponent):
    """The cost of a forward pass over `positions` (batch rows times positions each), in
    one-position passes: positions ** exponent (a pass reads every weight once whatever its
    width; the arithmetic grows with it)."""
    return tf.cast(positions, tf.float32) ** exponent


def acceptance(state):
    """Each row's chance [B] that its next proposal token is accepted: its recent accepted and
    rejected proposal tokens (`_adapt`), with the prior (PRIOR_HITS, PRIOR_MISSES)."""
    return (state["hits"] + PRIOR_HITS) / (state["hits"] + state["misses"] + PRIOR_HITS + PRIOR_MISSES)


def worth_it(wanted, running, rate, widths, exponent):
    """The pass width [] that commits the most tokens per unit of cost: 0 (a plain pass) or one of
    `widths`, each row proposing min(width, wanted) tokens.

    A row that proposes n tokens, each accepted with chance `rate` given the ones before it,
    commits 1 + rate + ... + rate^n tokens on average; the pass costs `pass_cost` of its B * (width
    + 1) positions. With exponent 0 the widest pass anyone wants is chosen (every proposal is
    checked, as without this choice)."""
    batch = tf.shape(wanted)[0]
    live = tf.cast(running, tf.float32)
    anyone = tf.reduce_max(wanted) > 0  # exponent 0: each wider pass wins while anyone proposes
    best, best_width = tf.reduce_sum(live) / pass_cost(batch, exponent), tf.constant(0, tf.int32)
    for width in widths:
        n = tf.cast(tf.minimum(wanted, width), tf.float32)
        gained = tf.where(rate < 1.0, rate * (1.0 - rate ** n) / tf.maximum(1.0 - rate, 1e-6), n)
        value = tf.reduce_sum(live * (1.0 + gained)) / pass_cost(batch * (width + 1), exponent)
        better = (value > best) if exponent else anyone
        best = tf.where(better, value, best)
        best_width = tf.where(better, width, best_width)
    return best_width


def _check_settings(proposer) -> None:
    """A proposer given as an object: pass_exponent a finite number >= 0, and a PromptLookup's
    n-gram sizes integers with 1 <= min_ngram <= max_ngram."""
    exponent = proposer.pass_exponent
    number = isinstance(exponent, (int, float)) and not isinstance(exponent, bool)
    if not number or not 0 <= exponent < float("inf"):
        raise ValueError(f"{type(proposer).__name__}.pass_exponent must be a finite number >= 0, "
                         f"got {exponent!r}")
    if isinstance(proposer, PromptLookup):
        sizes = (proposer.min_ngram, proposer.max_ngram)
        if any(isinstance(n, bool) or not isinstance(n, int) for n in sizes) or not 1 <= sizes[0] <= sizes[1]:
            raise ValueError(f"PromptLookup needs integers 1 <= min_ngram <= max_ngram, got min_ngram="
                             f"{proposer.min_ngram!r}, max_ngram={proposer.max_ngram!r}")


def proposer_for(speculative, lm) -> Optional[object]:
    """The proposer of a `speculative` argument: "prompt_lookup", a draft `TextGenerator` (same
    vocabulary as `lm`), a `PromptLookup` or `DraftModel` (taken as it is, the draft's vocabulary
    checked), or None (no speculation)."""
    if speculative is None:
        return None
    if isinstance(speculative, (PromptLookup, DraftModel)):
        _check_settings(speculative)
    if isinstance(speculative, PromptLookup):
        return speculative
    if isinstance(speculative, str):
        if speculative != "prompt_lookup":
            raise ValueError(f"speculative must be 'prompt_lookup' or a draft TextGenerator, "
                             f"got {speculative!r}")
        return PromptLookup()
    draft = getattr(speculative, "lm", None)  # a TextGenerator's model, or a DraftModel's
    if draft is None or not hasattr(draft, "forward"):
        raise TypeError(f"speculative must be 'prompt_lookup' or a draft TextGenerator, got "
                        f"{type(speculative).__name__}")
    if int(draft.vocab_size) != int(lm.vocab_size):
        raise ValueError(f"the draft model's vocabulary ({draft.vocab_size} tokens) differs from the model's "
                         f"({lm.vocab_size}); a draft must share the tokenizer")
    return speculative if isinstance(speculative, DraftModel) else DraftModel(draft)
