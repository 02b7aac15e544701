"""Medusa and plain decoding over a transformers causal LM, one step at a time.

One Medusa step (see the spec, section 4):

1. the heads read the hidden state of the newest cached token and propose top-k tokens each;
2. the tree's slots are filled with those proposals, the root being the base model's own
   next token (chosen from the carried logits);
3. one forward pass of the base decoder over the tree, with a 4D additive mask (each node sees
   the cache and its own ancestors) and depth-based position ids;
4. acceptance picks the longest acceptable path; its tokens are emitted and its cache entries
   kept, contiguous; the logits and hidden state at its last node seed the next step.

Plain decoding is the same loop with a one-slot tree and no heads. Greedy Medusa output equals
greedy plain output (up to floating-point ties, so tests of exactness run in fp32 or fp64).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import UserError
from . import acceptance
from .config import ACCEPTANCE_MODES, GenerationConfig
from .decoder import Decoder, TransformersDecoder, attach_heads
from .events import GenerationStats, StepEvent
from .heads import MedusaHeads
from .lookup import HIT_PRIOR, draft_length, lookup_draft
from .presets import DEFAULT_CPU_TREE, fit_to_heads, preset
from .profile import StepProfile
from .sampling import select
from .text import TextStream
from .tree import Tree, build_tree, with_chain


class ContextLengthError(UserError, ValueError):
    """The prompt does not fit the model's context window."""


@dataclass
class _State:
    """What one step hands the next: logits and hidden state after the newest cached token."""

    logits: torch.Tensor
    hidden: torch.Tensor
    pending: list[int] = field(default_factory=list)  # emitted tokens not yet in the cache
    root: int | None = None  # the next token, when lossless sampling already drew it


MODES = ("medusa", "plain")
LOOKUP_DECAY = 0.95  # weight of the lookup hit rate's history per scored step (about the last 20 count)


class _Pace:
    """Automatic fallback: which of Medusa and plain steps is faster now, measured during the answer.

    Each mode's rate is ``mean tokens / median seconds``: seconds over its latest run of steps (the last
    ``WINDOW``: the machine's load drifts, and timing noise moves a median little), tokens over its latest
    ``TOKENS_WINDOW`` steps of the answer whatever the runs (a tree's hits come and go step by step: a
    short probe's mean is too rough to decide on, and accepted tokens are signal, not noise). The
    preferred mode runs in stretches; after each one the other mode is tried for ``PROBE`` steps and the
    faster of the two is kept. The next stretch is ``STAY`` steps times the kept mode's lead, doubling
    each time the choice is confirmed (up to ``MAX_STAY``), so a slower mode costs ever less. The first
    step of each run is not timed: a plain one only picks a token, and a Medusa one also feeds the token
    the last plain step left pending.

    Every answer measures both modes itself, one right after the other's first ``PROBE`` steps: a speed
    from an earlier answer or from calibration was measured at another context length (and another load on
    the machine), so neither the choice nor the app's speedup gauge rests on it. An answer starts in the mode
    the previous answer of the conversation ended preferring (``start``): a conversation only grows, and a
    longer context costs a tree's rows more than a plain step, so once plain wins it tends to keep winning.
    Its stretches start short again (``STAY``): one probe at a new context length is too little to stay on.
    """

    WINDOW = 16  # latest timed steps of a run whose median is used
    TOKENS_WINDOW = 64  # latest steps of a mode in the answer whose mean tokens are used
    MIN_SAMPLES = 6  # timed steps a rate needs
    PROBE = MIN_SAMPLES + 1  # steps of a trial of the other mode (the first is not timed)
    STAY = 32  # steps of the preferred mode before the other one is tried again ...
    MAX_STAY = 512  # ... doubling each time the preferred mode is confirmed, up to this

    def __init__(self, start: str = "medusa") -> None:
        self.preferred = start
        self.mode = start
        self.left = self.PROBE  # steps before the next decision
        self.stay = self.STAY
        self._runs: dict[str, deque[float]] = {m: deque(maxlen=self.WINDOW) for m in MODES}
        self._tokens: dict[str, deque[int]] = {m: deque(maxlen=self.TOKENS_WINDOW) for m in MODES}
        self._last: str | None = None
        self._measured: dict[str, float | None] = dict.fromkeys(MODES)

    def record(self, mode: str, tokens: int, seconds: float) -> None:
        """One step's outcome: ``tokens`` emitted in ``seconds``."""
        if tokens > 0:
            self._tokens[mode].append(tokens)
        if mode != self._last:  # a new run: its first step is not timed
            self._last = mode
            self._runs[mode].clear()
        elif tokens > 0 and seconds > 0:
            self._runs[mode].append(seconds)
            self._measured[mode] = self.rate(mode) or self._measured[mode]

    def rate(self, mode: str) -> float | None:
        """Tokens/s of ``mode`` now, or None before its latest run has enough timed steps."""
        run = self._runs[mode]
        if len(run) < self.MIN_SAMPLES:
            return None
        return statistics.fmean(self._tokens[mode]) / statistics.median(run)

    @property
    def plain_rate(self) -> float | None:
        """The plain tokens/s of the latest run with enough timed steps (None when plain was not measured)."""
        return self._measured["plain"]

    @property
    def falling_back(self) -> bool:
        """Plain decoding is preferred: Medusa was measured slower."""
        return self.preferred == "plain"

    def next_mode(self) -> str:
        """The mode for the coming step."""
        if self.left <= 0:
            self._decide()
        self.left -= 1
        return self.mode

    def _decide(self) -> None:
        other = "plain" if self.mode == "medusa" else "medusa"
        mine = self.rate(self.mode)
        if mine is None:  # too few timed steps yet (a step emitted nothing or ran in the other mode)
            self.left = 1
        elif self.mode != self.preferred:  # the end of a trial: keep the faster mode
            theirs = self.rate(other)
            kept = self.mode if theirs is None or mine > theirs else other
            if kept != self.preferred:
                self.preferred, self.stay = kept, self.STAY
            gap = max(mine, theirs) / min(mine, theirs) if theirs else 1.0  # the clearer the win, the longer
            self._run(kept, min(round(self.stay * gap), self.MAX_STAY))
            self.stay = min(2 * self.stay, self.MAX_STAY)
        else:  # the end of a stretch of the preferred mode: try the other one
            self._run(other, self.PROBE)

    def _run(self, mode: str, steps: int) -> None:
        self.mode, self.left = mode, steps


class Generator:
    """Streams tokens from ``model`` (a transformers causal LM or any :class:`Decoder`), with or without heads.

    The generator keeps its KV cache between calls: a new prompt that extends an earlier one
    (the next turn of a conversation) only prefills the tokens after their common prefix.
    """

    def __init__(
        self,
        model: nn.Module | Decoder,
        tokenizer,
        heads: MedusaHeads | None = None,
        tree: str | Sequence[Sequence[int]] | None = None,
        max_context: int | None = None,
        eos_ids: set[int] | None = None,
    ) -> None:
        self.model = model
        self.decoder: Decoder = TransformersDecoder(model) if isinstance(model, nn.Module) else model
        self.tokenizer = tokenizer
        self.heads = heads
        self.device = self.decoder.device
        if heads is not None:
            attach_heads(heads, self.decoder)
        self.max_context = max_context or _context_window(self.decoder.config)
        self.eos_ids = eos_ids if eos_ids is not None else _eos_ids(self.decoder, tokenizer)
        self._cached_ids: list[int] = []
        self._preferred = "medusa"  # the mode the automatic fallback preferred at the end of the latest answer
        self.profile: StepProfile | None = None  # set to time each step's sections (bench --profile)
        self.step_costs: dict[int, float] = {}  # measured step cost by slots, relative to plain (calibration)
        self.tree_tokens = 1.0  # the tree's expected tokens per step (calibration's prediction)
        self._lookup_hits = self._lookup_misses = 0.0  # lookup tokens that came true / drafts that missed
        self._chains: dict[int, tuple] = {}
        self.tree_name = "none"
        self.tree = build_tree([])
        self._chains = {0: (self.tree, self.tree.ancestor_mask)}
        if heads is not None and tree is not None:
            self.set_tree(tree)
        elif heads is not None:
            self.set_tree(fit_to_heads(preset(DEFAULT_CPU_TREE), heads.num_heads), name=DEFAULT_CPU_TREE)

    @property
    def has_heads(self) -> bool:
        return self.heads is not None

    @property
    def cache(self):
        """The decoder's KV cache, holding :attr:`cached_ids`."""
        return self.decoder.cache

    @property
    def cached_ids(self) -> list[int]:
        """The token ids whose keys and values are in the cache."""
        return list(self._cached_ids)

    def set_tree(self, tree: str | Sequence[Sequence[int]], name: str | None = None) -> None:
        """Use a preset by name, or explicit choices (shown as ``name``); validated against the heads."""
        choices = preset(tree) if isinstance(tree, str) else tree
        built = build_tree(choices, num_heads=self.heads.num_heads if self.heads else 0)
        self.tree = built.to(self.device)
        self.tree_name = name or (tree if isinstance(tree, str) else f"custom-{built.size}")
        self._chains = {0: (self.tree, self.tree.ancestor_mask)}
        self.tree_tokens = 1.0  # not predicted for this tree (see use_step_costs)

    def use_step_costs(self, costs: Mapping[int, float], tree_tokens: float = 1.0) -> None:
        """Measured step costs by slots (relative to a plain step) and the tree's expected tokens per step: prompt-
        lookup drafts are then cut to the length that pays at the hit rate seen so far (see ``draft_length``)."""
        self.step_costs, self.tree_tokens = dict(costs), tree_tokens

    def _draft_limit(self, limit: int) -> int:
        """How many of a ``limit``-token lookup draft this step verifies (all when no step costs are known)."""
        if not self.step_costs:
            return limit
        hits, misses = self._lookup_hits + HIT_PRIOR[0], self._lookup_misses + HIT_PRIOR[1]
        hit_rate = hits / (hits + misses)
        return draft_length(limit, self.tree.size, self.tree_tokens, hit_rate, self.step_costs)

    def _count_lookup(self, draft: list[int], emitted: list[int]) -> None:
        """Score a lookup draft against what the step emitted (its root first), whether or not the draft was verified:
        each drafted token seen is a hit until the first miss. Older steps weigh less, so the rate follows the text."""
        seen = min(len(draft), len(emitted) - 1)  # drafted tokens the step can judge
        hits = _common_prefix(draft[:seen], emitted[1:])
        misses = int(hits < seen)
        if seen:
            self._lookup_hits = LOOKUP_DECAY * self._lookup_hits + hits
            self._lookup_misses = LOOKUP_DECAY * self._lookup_misses + misses

    def _tree_with_chain(self, length: int) -> tuple[Tree, torch.Tensor]:
        """The tree plus a prompt-lookup chain of ``length`` slots, with its attention block (cached)."""
        if length not in self._chains:
            tree = with_chain(self.tree, length)
            self._chains[length] = (tree, tree.ancestor_mask)
        return self._chains[length]

    def reset(self) -> None:
        """Forget the cached conversation."""
        self.decoder.new_cache()
        self._cached_ids = []

    def generate(
        self, input_ids: Sequence[int], config: GenerationConfig, cancel: threading.Event | None = None
    ) -> GenerationStats:
        """Run :meth:`stream` to the end and return its stats."""
        for item in self.stream(input_ids, config, cancel):
            if isinstance(item, GenerationStats):
                return item
        raise AssertionError("stream() ended without stats")

    def stream(
        self, input_ids: Sequence[int], config: GenerationConfig, cancel: threading.Event | None = None
    ) -> Iterator[StepEvent | GenerationStats]:
        """Yield a :class:`StepEvent` per decoding step, then the :class:`GenerationStats`."""
        input_ids = list(input_ids)
        if not input_ids:
            raise ValueError("the prompt is empty")
        if len(input_ids) >= self.max_context:
            raise ContextLengthError(
                f"the prompt has {len(input_ids)} tokens but this model's context holds {self.max_context}: "
                "shorten the prompt or start a new conversation"
            )
        vocab = self.decoder.vocab_size
        if not all(0 <= t < vocab for t in input_ids):
            raise ValueError(f"the prompt holds token ids outside this model's vocabulary (0..{vocab - 1})")
        if config.acceptance not in ACCEPTANCE_MODES:
            raise ValueError(f"acceptance must be one of {', '.join(ACCEPTANCE_MODES)}, not {config.acceptance!r}")
        use_medusa = config.medusa and ((self.heads is not None and self.tree.size > 1) or config.prompt_lookup > 0)
        cached = len(self._cached_ids)
        pace: _Pace | None = None
        fallback_steps = 0
        rng = torch.Generator().manual_seed(config.seed) if config.seed is not None else None
        text = TextStream(self.tokenizer, config.stop_strings)
        new_ids: list[int] = []
        steps = 0
        decode_time = 0.0
        stop_reason = "max_new_tokens"

        try:
            with torch.inference_mode():
                t0 = time.perf_counter()
                reused, state = self._prefill(input_ids)
                prefill_time = time.perf_counter() - t0
                if use_medusa and config.auto_fallback:  # a turn of the same conversation starts as the last ended
                    pace = _Pace(self._preferred if 0 < cached <= 2 * reused else "medusa")
                while len(new_ids) < config.max_new_tokens:
                    if cancel is not None and cancel.is_set():
                        stop_reason = "cancelled"
                        break
                    t0 = time.perf_counter()
                    room = self.max_context - self.decoder.cache_length - len(state.pending)
                    mode = pace.next_mode() if pace else ("medusa" if use_medusa else "plain")
                    tree_size = 1
                    if mode == "medusa" and room >= self.tree.size + config.prompt_lookup:
                        tokens, from_heads, state, tree_size = self._medusa_step(state, config, rng)
                    elif room >= 1:
                        mode = "plain"
                        tokens, from_heads, state = self._plain_step(state, config, rng)
                    else:
                        stop_reason = "context"
                        break
                    tokens, stop = self._trim(tokens, config.max_new_tokens - len(new_ids))
                    from_heads = from_heads[: len(tokens)]
                    new_ids.extend(tokens)
                    delta = text.push(tokens)
                    step_time = time.perf_counter() - t0
                    decode_time += step_time
                    if self.profile:
                        self.profile.add_step(step_time)
                    steps += bool(tokens)  # a step that only found the end of the answer emits nothing
                    fallback = pace is not None and mode == "plain" and pace.falling_back
                    if pace:
                        pace.record(mode, len(tokens), step_time)
                        fallback_steps += fallback
                    yield StepEvent(tokens, delta, len(tokens), tree_size, step_time, from_heads, fallback)
                    if stop:
                        stop_reason = "eos"
                        break
                    if text.stopped:
                        stop_reason = "stop_string"
                        break
        except GeneratorExit:  # the consumer stopped reading: the cache is consistent at every yield
            raise
        except BaseException:  # an error inside a step may leave the cache half-updated: start afresh next time
            self.reset()
            raise
        finally:
            self._keep_answer(len(input_ids) + len(new_ids) - 1)  # after reset() there is nothing to cut
            if pace is not None:
                self._preferred = pace.preferred
        tail = text.flush()
        if tail:
            yield StepEvent([], tail, 0, 0, 0.0, [])
        yield GenerationStats(
            new_tokens=len(new_ids),
            steps=steps,
            prefill_time=prefill_time,
            decode_time=decode_time,
            prompt_tokens=len(input_ids),
            reused_tokens=reused,
            stop_reason=stop_reason,
            medusa=use_medusa,
            text=text.text,
            token_ids=new_ids,
            fallback_steps=fallback_steps,
        )

    # -- steps ---------------------------------------------------------------------------------

    def _keep_answer(self, length: int) -> None:
        """Cache at most the first ``length`` tokens: the prompt and all but the last token emitted.

        How far a step has cached depends on the mode (a plain step leaves its token pending, a tree step caches
        every token it accepts, an end-of-sequence token too), and the next turn's prefill recomputes from
        where the cache ends, in a batched pass that rounds differently from steps. Cutting every answer at the
        same place keeps the next turn identical whichever mode wrote this one.
        """
        if len(self._cached_ids) > length:
            self.decoder.truncate(length)
            self._cached_ids = self._cached_ids[:length]

    def _prefill(self, input_ids: list[int]) -> tuple[int, _State]:
        """Bring the cache to ``input_ids``, reusing the longest common prefix; return (reused, state)."""
        reused = min(_common_prefix(self._cached_ids, input_ids), len(input_ids) - 1)
        self.decoder.truncate(reused)
        self._cached_ids = self._cached_ids[:reused]
        hidden = self._forward(input_ids[reused:])
        self._cached_ids.extend(input_ids[reused:])
        return reused, _State(self._logits(hidden[-1]), hidden[-1])

    def _flush(self, state: _State) -> _State:
        """Feed the tokens emitted but not yet cached (a plain step defers its forward pass)."""
        if not state.pending:
            return state
        with self._section("forward"):
            hidden = self._forward(state.pending)
        self._cached_ids.extend(state.pending)
        with self._section("logits"):
            return _State(self._logits(hidden[-1]), hidden[-1])

    def _plain_step(self, state: _State, config: GenerationConfig, rng) -> tuple[list[int], list[bool], _State]:
        """Pick the next token; its forward pass happens at the start of the next step (if any)."""
        root = state.root
        state = self._flush(state)
        with self._section("acceptance"):
            token = root if root is not None else select(state.logits, config.temperature, config.top_p, rng)
        return [token], [False], _State(state.logits, state.hidden, pending=[token])

    def _medusa_step(
        self, state: _State, config: GenerationConfig, rng
    ) -> tuple[list[int], list[bool], _State, int]:
        """One tree step: propose, verify in one forward pass, accept, compact the cache."""
        root = state.root
        state = self._flush(state)
        if root is None:
            root = select(state.logits, config.temperature, config.top_p, rng)
        tree = self.tree
        tokens = torch.tensor([root], device=self.device)
        if self.heads is not None and tree.depth:
            with self._section("heads"):
                embedding = self.decoder.embed(tokens)[0] if self.heads.root_conditioned else None
                proposals = self.heads.propose(state.hidden, self.decoder.lm_head, tree.depth, tree.topk, embedding)
                tokens = torch.cat([tokens, proposals.flatten()])[tree.tree_indices]
        found = lookup_draft([*self._cached_ids, root], config.prompt_lookup) if config.prompt_lookup else []
        draft = found[: self._draft_limit(len(found))] if found else []
        tree, block = self._tree_with_chain(len(draft))
        if draft:
            tokens = torch.cat([tokens, torch.tensor(draft, device=self.device)])

        start = self.decoder.cache_length
        mask = torch.cat([block.new_ones(tree.size, start), block], dim=-1)
        with self._section("tree forward"):
            hidden = self._forward(tokens, mask=mask, positions=start + tree.depths)
        with self._section("logits"):
            logits = self.decoder.logits(hidden)

        with self._section("acceptance"):
            slots, next_root = self._accept(tokens, tree, logits, config, rng)
        with self._section("compaction"):
            self.decoder.keep_path(start, slots)
            emitted = tokens[slots].tolist()
        if found:
            self._count_lookup(found, emitted)
        self._cached_ids.extend(emitted)
        last = slots[-1]
        from_heads = [False] + [True] * (len(emitted) - 1)
        return emitted, from_heads, _State(logits[last], hidden[last], root=next_root), tree.size

    def _accept(
        self, tokens: torch.Tensor, tree: Tree, logits: torch.Tensor, config: GenerationConfig, rng
    ) -> tuple[torch.Tensor, int | None]:
        """The accepted slots (root first) and, for exact sampling, the next root already drawn."""
        next_root = None
        if config.temperature > 0 and config.acceptance == "exact":
            path, next_root = acceptance.sample_walk(
                tokens, tree.parents, logits, config.temperature, config.top_p, rng
            )
            slots = torch.tensor(path, device=self.device)
        else:
            if config.temperature > 0:
                ok, scores = acceptance.typical_nodes(
                    tokens, logits, tree.parents, config.temperature, config.posterior_threshold,
                    config.posterior_alpha,
                )
                row, length = acceptance.best_path(ok, tree.retrieve_indices, scores)
            else:
                ok = acceptance.greedy_nodes(tokens, logits, tree.parents)
                row, length = acceptance.best_path(ok, tree.retrieve_indices)
            slots = tree.retrieve_indices[row, : length + 1]
        return slots, next_root

    def _section(self, name: str):
        """A timed section of the step when profiling, else nothing."""
        return self.profile.section(name) if self.profile else nullcontext()

    def _forward(
        self, tokens: Sequence[int] | torch.Tensor, mask: torch.Tensor | None = None, positions=None
    ) -> torch.Tensor:
        """Run the decoder on ``tokens`` over the cache; return their final hidden states [n, H].

        ``mask`` [n, L + n] (bool) defaults to causal. One-token steps pass an explicit all-true mask, so
        they take the same attention path as tree rows (the same rounding: greedy Medusa equals plain).
        """
        ids = torch.as_tensor(tokens, device=self.device).view(1, -1)
        start = self.decoder.cache_length
        if positions is None:
            positions = torch.arange(start, start + ids.shape[1], device=self.device)
        if mask is None and ids.shape[1] == 1:
            mask = torch.ones(1, start + 1, dtype=torch.bool, device=self.device)
        hidden = self.decoder.forward(ids, positions.view(1, -1), None if mask is None else mask[None, None])
        return hidden[0]

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder.logits(hidden)

    def _trim(self, tokens: list[int], budget: int) -> tuple[list[int], bool]:
        """Cut at the first end-of-sequence token (excluded) and at the token budget."""
        for i, token in enumerate(tokens[:budget]):
            if token in self.eos_ids:
                return tokens[:i], True
        return tokens[:budget], False


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _context_window(config) -> int:
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(getattr(config, "max_position_embeddings", None) or 2048)


def _eos_ids(decoder: Decoder, tokenizer) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(decoder, "generation_config", None), decoder.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if value is None:
            continue
        ids.update(value if isinstance(value, list | tuple | set) else [value])
    return ids
