"""Tree tuning (``medusa-chat tune``): the tree with the most tokens per second on this machine.

The reference trees (63 nodes) were grown for one datacenter GPU by expected acceptance alone.
Here the size is chosen by speed, from measurements on the user's own machine, model and precision:

1. **Acceptance.** The base model answers the calibration prompts greedily; at every step the
   heads' top-k guesses are ranked against the base's own next tokens, one row of ranks per step
   (one rank per head, ``TOPK`` = not in the top-k). A node ``(r1, ..., rd)`` is accepted when
   head j's truth sits at rank r(j+1) for every j < d. Its probability is read from the joint
   rows (heads tend to be right together), shrunk toward the reference's independence product
   of per-head rank rates (spec §3.4) where rows are few. Greedy acceptance takes at most one
   child per node, so the expected accepted length of a tree is 1 + the sum of its nodes'
   probabilities (the root, the base model's own token, always counts).
2. **Growth.** As the reference: repeatedly add the most probable node whose parent is in the tree.
3. **Step cost.** Real generator steps (heads, tree forward, acceptance, KV compaction) with the
   growth order's first q-1 nodes (q slots), relative to plain steps run next to them, on a
   calibration answer cut to the mean cache length of a step (the ratio falls as the cache
   grows); sizes are rotated between rounds and each ratio is a median.
4. **Choice.** The size q with the highest expected accepted length / step cost (costs are
   made non-decreasing from 4 slots on, since a dip is noise the choice would fall into, and
   interpolated between measured sizes); then greedy generation with the chosen tree against
   plain decoding on the calibration prompts gives the measured speedup.

The result is saved per model, device and precision by :func:`medusa_chat.trees.save_tuned`.
"""

from __future__ import annotations

import math
import platform
import statistics
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

import torch

from .engine.generator import GenerationConfig, Generator
from .engine.tree import TOPK, build_tree

RANK_MISS = TOPK
"""The rank recorded when the true token is not among a head's top-k guesses."""

Node = tuple[int, ...]
"""A tree node: its per-depth ranks, as in tree choices."""
Progress = Callable[[str, int, int], None]
"""Called as ``progress(phase, done, total)`` while tuning."""

TUNED_NAME = "tuned"


# -- acceptance model --------------------------------------------------------------------------------


@runtime_checkable
class PathModel(Protocol):
    """Probability that a tree node (a path of per-depth ranks) is accepted in a greedy step."""

    def probability(self, path: Node) -> float: ...


class IndependentAcceptance:
    """The reference's model: P(path) = product over depths d of ``rank_hits[d][r_d]``."""

    def __init__(self, rank_hits: Sequence[Sequence[float]]) -> None:
        self.rank_hits = [list(rates) for rates in rank_hits]

    def probability(self, path: Node) -> float:
        return math.prod(self.rank_hits[depth][rank] for depth, rank in enumerate(path))


class ConditionalAcceptance:
    """Joint per-step ranks: P(head d at rank r | the path so far was accepted), from the same rows.

    ``ranks[n][d]`` is the rank of head d's true token at calibration step n (``RANK_MISS`` when
    outside the top-k). The conditional rate of a node given its parent is
    ``(count(node) + s * rate[d][r]) / (count(parent) + s)`` with ``s = prior_strength`` pseudo-rows
    at the independent rate, so well-sampled nodes follow the data and rare ones the reference model.
    """

    def __init__(self, ranks: Sequence[Sequence[int]], prior_strength: float = 20.0) -> None:
        rows = [tuple(int(r) for r in row) for row in ranks]
        if not rows:
            raise ValueError("no calibration steps to estimate acceptance from")
        self.num_heads = len(rows[0])
        self.samples = len(rows)
        columns = [Counter(row[d] for row in rows) for d in range(self.num_heads)]
        self.rank_hits = [[columns[d][r] / self.samples for r in range(TOPK)] for d in range(self.num_heads)]
        self._counts: Counter[Node] = Counter({(): self.samples})
        for row in rows:
            for depth in range(1, self.num_heads + 1):
                if row[depth - 1] == RANK_MISS:
                    break
                self._counts[row[:depth]] += 1
        self._strength = prior_strength
        self._memo: dict[Node, float] = {(): 1.0}

    def probability(self, path: Node) -> float:
        path = tuple(path)
        if path not in self._memo:
            parent = path[:-1]
            prior = self.rank_hits[len(parent)][path[-1]]
            rate = (self._counts[path] + self._strength * prior) / (self._counts[parent] + self._strength)
            self._memo[path] = self.probability(parent) * rate
        return self._memo[path]


def _as_model(acceptance: PathModel | Sequence[Sequence[float]]) -> PathModel:
    return acceptance if isinstance(acceptance, PathModel) else IndependentAcceptance(acceptance)


def expected_accepted(choices: Sequence[Sequence[int]], acceptance: PathModel | Sequence[Sequence[float]]) -> float:
    """Expected tokens per greedy step with this tree: 1 (the root) + the nodes' acceptance probabilities."""
    model = _as_model(acceptance)
    return 1.0 + sum(model.probability(tuple(c)) for c in choices)


def grow_tree(acceptance: PathModel | Sequence[Sequence[float]], max_depth: int, max_nodes: int) -> list[Node]:
    """Nodes in greedy order: each is the most probable one whose parent is already in (ties: shallower, lower ranks).

    Every prefix of the result is a valid tree, and the best one of its size when probabilities
    fall along paths (they do for both models). Growth stops early at nodes that are never accepted.
    """
    model = _as_model(acceptance)
    order: list[Node] = []
    frontier: dict[Node, float] = {(r,): model.probability((r,)) for r in range(TOPK)} if max_depth > 0 else {}
    while frontier and len(order) < max_nodes:
        path = max(frontier, key=lambda p: (frontier[p], -len(p), tuple(-r for r in p)))
        if frontier.pop(path) <= 0:
            break
        order.append(path)
        if len(path) < max_depth:
            frontier.update({(*path, r): model.probability((*path, r)) for r in range(TOPK)})
    return order


def interpolate_cost(costs: Mapping[int, float], size: int) -> float | None:
    """The step cost at ``size`` slots, linear between measured sizes; None outside them."""
    if size in costs:
        return costs[size]
    below = [q for q in costs if q < size]
    above = [q for q in costs if q > size]
    if not below or not above:
        return None
    lo, hi = max(below), min(above)
    return costs[lo] + (costs[hi] - costs[lo]) * (size - lo) / (hi - lo)


def smooth_costs(costs: Mapping[int, float], monotone_from: int = 4) -> dict[int, float]:
    """Costs made non-decreasing from ``monotone_from`` slots on (pool adjacent violators); smaller sizes as measured.

    Verifying more tokens is never cheaper, so a dip in measured costs is noise, and the size
    choice would pick exactly that dip. Below 4 slots small-matrix kernels can really be slower
    than at 4 (fp32 on CPUs), so those sizes keep their measurements.
    """
    sizes = sorted(costs)
    tail = [q for q in sizes if q >= monotone_from]
    blocks: list[tuple[float, int]] = []  # (sum, count) of pooled neighbours
    for q in tail:
        total, count = costs[q], 1
        while blocks and blocks[-1][0] / blocks[-1][1] > total / count:
            prev_total, prev_count = blocks.pop()
            total, count = total + prev_total, count + prev_count
        blocks.append((total, count))
    pooled = [total / count for total, count in blocks for _ in range(count)]
    return {q: costs[q] for q in sizes if q < monotone_from} | dict(zip(tail, pooled, strict=True))


def predicted_speedups(
    order: Sequence[Node], acceptance: PathModel | Sequence[Sequence[float]], costs: Mapping[int, float]
) -> dict[int, float]:
    """Predicted speedup over plain decoding of each prefix of ``order``, by tree size in slots."""
    model = _as_model(acceptance)
    curve: dict[int, float] = {}
    accepted = 1.0
    for size, path in enumerate(order, start=2):
        accepted += model.probability(path)
        cost = interpolate_cost(costs, size)
        if cost is not None:
            curve[size] = accepted / cost
    return curve


def build_best_tree(
    acceptance: PathModel | Sequence[Sequence[float]],
    costs: Mapping[int, float],
    max_depth: int,
    max_nodes: int,
) -> tuple[list[list[int]], float]:
    """The greedy-grown tree whose size maximises expected accepted length / step cost.

    ``acceptance`` is a :class:`PathModel` or per-head per-rank hit rates (``rank_hits[d][r]``);
    ``costs`` maps tree sizes in slots (root included) to the cost of one step relative to a
    plain step. Returns the choices and the predicted speedup over plain decoding; the empty tree
    (plain decoding, speedup 1) when no size pays for itself.
    """
    order = grow_tree(acceptance, max_depth, max_nodes)
    best_size, best = 1, 1.0
    for size, speedup in predicted_speedups(order, acceptance, costs).items():
        if speedup > best:
            best_size, best = size, speedup
    return [list(p) for p in order[: best_size - 1]], best


# -- measurements ------------------------------------------------------------------------------------


@dataclass
class Calibration:
    """Greedy answers to the calibration prompts and, per scored step, the rank of each head's true token."""

    ranks: list[tuple[int, ...]]
    sequences: list[list[int]]  # prompt ids + answer ids
    prompt_lengths: list[int]

    def typical_context(self) -> list[int]:
        """The longest sequence cut to the mean cache length of a decoding step (prompt + half the answer).

        A step's cost relative to a plain one falls as the cache grows (attention over the cache
        is paid by both, the extra tree tokens are not), so costs are measured at this length.
        """
        lengths = [p + (len(s) - p) / 2 for s, p in zip(self.sequences, self.prompt_lengths, strict=True)]
        return max(self.sequences, key=len)[: max(1, round(statistics.mean(lengths)))]


def calibrate(
    generator: Generator,
    prompts_ids: Sequence[Sequence[int]],
    steps: int,
    progress: Progress | None = None,
) -> Calibration:
    """Answer each prompt greedily and rank every head's true token at every step (``RANK_MISS`` if none).

    At step s the heads read the hidden state that predicted answer token s (the step's root);
    head i is scored against answer token s + 1 + i, as a Medusa step would accept it.
    """
    heads = _require_heads(generator)
    k = heads.num_heads
    decoder = generator.decoder
    result = Calibration([], [], [])
    if progress:
        progress("acceptance", 0, len(prompts_ids))
    for n, ids in enumerate(prompts_ids, start=1):
        generator.reset()
        answer = generator.generate(ids, GenerationConfig(max_new_tokens=steps + k, medusa=False)).token_ids
        result.sequences.append([*ids, *answer])
        result.prompt_lengths.append(len(ids))
        scored = min(steps, len(answer) - k)
        if scored > 0:
            with torch.inference_mode():
                seq = torch.tensor([result.sequences[-1]], device=generator.device)
                decoder.new_cache()
                hidden = decoder.forward(seq, torch.arange(seq.shape[1], device=seq.device)[None])[0]
                hidden = hidden[len(ids) - 1 : len(ids) - 1 + scored]
                roots = seq[0, len(ids) : len(ids) + scored]
                root = decoder.embed(roots) if heads.root_conditioned else None
                top = heads.propose(hidden, decoder.lm_head, k, TOPK, root)  # [K, S, TOPK]
            truth = torch.tensor(answer, device=top.device)
            truth = torch.stack([truth[1 + i : 1 + i + scored] for i in range(k)])  # [K, S]
            match = top == truth[..., None]
            ranks = torch.where(match.any(-1), match.int().argmax(-1), RANK_MISS)
            result.ranks.extend(tuple(row) for row in ranks.T.tolist())
        if progress:
            progress("acceptance", n, len(prompts_ids))
    generator.reset()
    return result


def measurement_sizes(largest: int) -> list[int]:
    """Tree sizes (slots) worth measuring up to ``largest``: every size to 8, then sparser."""
    sizes = {*range(2, 9), *range(10, 17, 2), *range(20, 33, 4), *range(40, max(largest, 40) + 1, 8), largest}
    return sorted(q for q in sizes if 2 <= q <= largest)


GENERIC_RATES = [[0.6 * 0.75**d * 0.5**r for r in range(TOPK)] for d in range(TOPK)]
"""Made-up rank rates that give trees of a typical shape, for measuring costs without calibration."""


def measure_step_costs(
    generator: Generator,
    sizes: Sequence[int],
    prompt_ids: Sequence[int],
    repeats: int = 5,
    *,
    steps: int = 8,
    order: Sequence[Node] | None = None,
    progress: Progress | None = None,
) -> dict[int, float]:
    """The cost of a real Medusa step with a tree of each size (slots), relative to a plain step.

    Each round runs ``steps`` generator steps at every size (in rotated order) next to as many
    plain steps, from ``prompt_ids`` (the cache length matters: use a typical one); the cost at a
    size is the median over rounds of its median step time divided by the adjacent plain one's.
    The tree of size q is the first q-1 nodes of ``order`` (default: a typical greedy-grown tree).
    End-of-sequence tokens do not stop these runs. The generator's tree is restored afterwards.
    """
    heads = _require_heads(generator)
    sizes = sorted({int(q) for q in sizes if q >= 2})
    if not sizes:
        raise ValueError("measure at least one tree size of 2 slots or more")
    if order is None:
        order = grow_tree(GENERIC_RATES[: heads.num_heads], heads.num_heads, sizes[-1] - 1)
    if len(order) < sizes[-1] - 1:
        raise ValueError(f"the node order has {len(order)} nodes, too few for a tree of {sizes[-1]} slots")
    trees: dict[int, list[list[int]] | None] = {1: None} | {q: [list(p) for p in order[: q - 1]] for q in sizes}
    saved_tree, saved_name, saved_eos = generator.tree.choices, generator.tree_name, generator.eos_ids
    generator.eos_ids = set()
    ratios: dict[int, list[float]] = {q: [] for q in sizes}
    total = repeats * len(sizes)
    try:
        for tree in trees.values():  # warm-up: first calls of a new shape allocate and pick kernels
            _step_times(generator, prompt_ids, tree, 2)
        if progress:
            progress("step cost", 0, total)
        for rep in range(repeats):
            shift = rep % len(sizes)
            for n, q in enumerate(sizes[shift:] + sizes[:shift]):
                pair = (1, q) if (rep + n) % 2 else (q, 1)
                times = {key: statistics.median(_step_times(generator, prompt_ids, trees[key], steps)) for key in pair}
                ratios[q].append(times[q] / times[1])
                if progress:
                    progress("step cost", rep * len(sizes) + n + 1, total)
    finally:
        generator.eos_ids = saved_eos
        generator.set_tree([list(c) for c in saved_tree], name=saved_name)
        generator.reset()
    return {q: statistics.median(r) for q, r in ratios.items()}


def _step_times(
    generator: Generator, prompt_ids: Sequence[int], tree: list[list[int]] | None, steps: int
) -> list[float]:
    """Wall times of ``steps`` decoding steps after the first (plain when ``tree`` is None)."""
    if tree is not None:
        generator.set_tree(tree, name=f"probe-{len(tree) + 1}")
    config = GenerationConfig(max_new_tokens=(steps + 1) * (generator.tree.size + 1), medusa=tree is not None)
    times: list[float] = []
    stream = generator.stream(prompt_ids, config)
    try:
        for n, event in enumerate(stream):
            if n > 0:  # the first plain step has no forward pass yet (prefill fed it)
                times.append(event.step_time)
            if len(times) == steps:
                break
    finally:
        stream.close()
    return times


def measure_speedups(
    generator: Generator,
    prompts_ids: Sequence[Sequence[int]],
    trees: Mapping[str, Sequence[Sequence[int]]],
    max_new_tokens: int = 128,
    progress: Progress | None = None,
) -> dict[str, dict[str, float]]:
    """Greedy decoding speed of plain decoding and of each named tree on every prompt, in rotation.

    Returns per method ``tok_s`` (tokens over decoding time, prefill excluded), ``mean_accepted``
    (tokens per step) and ``speedup`` (over plain). The generator's tree is restored afterwards.
    """
    _require_heads(generator)
    methods = ["plain", *trees]
    tokens = dict.fromkeys(methods, 0)
    steps = dict.fromkeys(methods, 0)
    seconds = dict.fromkeys(methods, 0.0)
    saved_tree, saved_name = generator.tree.choices, generator.tree_name

    def run(method: str, ids: Sequence[int], budget: int):
        if method != "plain":
            generator.set_tree([list(c) for c in trees[method]], name=method)
        generator.reset()
        return generator.generate(ids, GenerationConfig(max_new_tokens=budget, medusa=method != "plain"))

    try:
        for method in methods:
            run(method, prompts_ids[0], 8)
        if progress:
            progress("speed check", 0, len(prompts_ids))
        for n, ids in enumerate(prompts_ids):
            shift = n % len(methods)
            for method in methods[shift:] + methods[:shift]:
                stats = run(method, ids, max_new_tokens)
                tokens[method] += stats.new_tokens
                steps[method] += stats.steps
                seconds[method] += stats.decode_time
            if progress:
                progress("speed check", n + 1, len(prompts_ids))
    finally:
        generator.set_tree([list(c) for c in saved_tree], name=saved_name)
        generator.reset()
    speed = {m: tokens[m] / seconds[m] if seconds[m] > 0 else 0.0 for m in methods}
    return {
        m: {
            "tok_s": speed[m],
            "mean_accepted": tokens[m] / steps[m] if steps[m] else 0.0,
            "speedup": speed[m] / speed["plain"] if speed["plain"] > 0 else 0.0,
        }
        for m in methods
    }


def _require_heads(generator: Generator):
    if generator.heads is None:
        raise ValueError("this model has no Medusa heads to tune a tree for: pass --heads")
    return generator.heads


# -- the whole tuning run -------------------------------------------------------------------------


def tune(
    loaded,
    prompts: Sequence[str],
    *,
    max_nodes: int = 63,
    steps: int = 128,
    repeats: int = 5,
    measure_limit: int = 10,
    max_new_tokens: int = 128,
    compare: Mapping[str, Sequence[Sequence[int]]] | None = None,
    prior_strength: float = 20.0,
    progress: Progress | None = None,
) -> dict:
    """Tune a tree for ``loaded`` (a :class:`~medusa_chat.loading.LoadedModel`) on ``prompts``; return the report.

    ``steps`` greedy tokens of each prompt's answer calibrate acceptance; step costs are measured
    over ``repeats`` rounds; the chosen tree and the ``compare`` trees are checked against plain
    decoding on the first ``measure_limit`` prompts with ``max_new_tokens`` each. The generator
    ends up using the tuned tree. Nothing is saved (see :func:`save_tuned`).
    """
    generator: Generator = loaded.generator
    heads = _require_heads(generator)
    if not prompts:
        raise ValueError("no calibration prompts")
    prompts_ids = [loaded.chat_ids([{"role": "user", "content": p}]) for p in prompts]

    calibration = calibrate(generator, prompts_ids, steps, progress)
    acceptance = ConditionalAcceptance(calibration.ranks, prior_strength)
    order = grow_tree(acceptance, heads.num_heads, max_nodes)
    if not order:
        raise ValueError("the heads never guessed right on the calibration prompts: nothing to tune")
    sizes = measurement_sizes(len(order) + 1)
    context = calibration.typical_context()
    costs = measure_step_costs(generator, sizes, context, repeats, order=order, progress=progress)
    used = smooth_costs(costs)
    choices, predicted = build_best_tree(acceptance, used, heads.num_heads, max_nodes)
    curve = predicted_speedups(order, acceptance, used)
    measured = measure_speedups(
        generator, prompts_ids[:measure_limit], {TUNED_NAME: choices, **(compare or {})}, max_new_tokens, progress
    )
    generator.set_tree(choices, name=TUNED_NAME)
    tree = build_tree(choices)
    return {
        "name": TUNED_NAME,
        "model": loaded.name,
        "device": loaded.device,
        "dtype": loaded.dtype,
        "choices": choices,
        "tree_size": tree.size,
        "depth": tree.depth,
        "predicted_speedup": round(predicted, 4),
        "measured_speedup": round(measured[TUNED_NAME]["speedup"], 4),
        "predicted_accepted": round(expected_accepted(choices, acceptance), 4),
        "independent_accepted": round(expected_accepted(choices, acceptance.rank_hits), 4),
        "measured_accepted": round(measured[TUNED_NAME]["mean_accepted"], 4),
        "step_cost": round(interpolate_cost(used, tree.size) or 1.0, 4),
        "costs": {str(q): round(c, 4) for q, c in costs.items()},
        "smoothed_costs": {str(q): round(c, 4) for q, c in used.items()},
        "predicted_curve": {str(q): round(s, 4) for q, s in curve.items()},
        "measured": {m: {k: round(v, 4) for k, v in r.items()} for m, r in measured.items()},
        "rank_hits": [[round(x, 5) for x in rates] for rates in acceptance.rank_hits],
        "calibration_steps": acceptance.samples,
        "cost_context_tokens": len(context),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {
            "heads": heads.num_heads,
            "prompts": len(prompts),
            "measure_prompts": min(measure_limit, len(prompts)),
            "steps": steps,
            "repeats": repeats,
            "max_nodes": max_nodes,
            "max_new_tokens": max_new_tokens,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "machine": platform.machine(),
        },
    }
