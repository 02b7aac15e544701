"""Automatic fallback: which of Medusa and plain steps runs, from scripted step times (no machine timing)."""

import re
from collections.abc import Callable
from itertools import groupby, pairwise
from types import SimpleNamespace

import pytest

from medusa_chat.engine import generator as generator_module
from medusa_chat.engine.events import StepEvent
from medusa_chat.engine.generator import GenerationConfig, Generator, _Pace
from medusa_chat.tui.stats import EARLIER_PLAIN, FEW_STEPS, Gauges, summary_lines
from medusa_chat.tui.widgets.gauges import gauge_parts
from tests.tiny import random_heads, tiny_model, tiny_tokenizer

TOK = tiny_tokenizer()
PLAIN = 0.01  # seconds per plain step: 100 tokens/s
Step = Callable[[str, int], tuple[int, float]]  # (mode, step index) -> (tokens, seconds)


def speeds(medusa: float, tokens: int = 2) -> Step:
    """Medusa at ``medusa`` times the plain speed, ``tokens`` tokens a step."""
    return lambda mode, i: (tokens, tokens * PLAIN / medusa) if mode == "medusa" else (1, PLAIN)


def drive(pace: _Pace, n: int, step: Step) -> list[str]:
    """The modes of ``n`` steps, each recorded with its scripted outcome."""
    modes = []
    for i in range(n):
        mode = pace.next_mode()
        modes.append(mode)
        pace.record(mode, *step(mode, i))
    return modes


def runs(modes: list[str], mode: str) -> list[tuple[int, int]]:
    """(start, length) of each run of ``mode``."""
    out, i = [], 0
    for m, group in groupby(modes):
        n = len(list(group))
        if m == mode:
            out.append((i, n))
        i += n
    return out


def test_plain_runs_only_in_short_rare_probes_when_medusa_is_faster():
    pace = _Pace()
    modes = drive(pace, 1000, speeds(1.3))
    probes = runs(modes, "plain")
    assert probes[0][0] == _Pace.PROBE  # measured once Medusa's rate is known
    assert all(n == _Pace.PROBE for _, n in probes)  # back to Medusa at once, every time
    gaps = [b[0] - a[0] for a, b in pairwise(probes)]
    assert gaps == sorted(gaps) and gaps[-1] > 4 * gaps[0]  # re-probed ever less often
    assert modes.count("plain") <= 0.04 * len(modes)
    assert not pace.falling_back and pace.plain_rate == pytest.approx(100.0)


def test_medusa_at_0_6x_plain_falls_back_after_the_first_probe_and_rarely_retries():
    pace = _Pace()
    modes = drive(pace, 1000, speeds(0.6))
    start = 2 * _Pace.PROBE  # Medusa's first run, then the probe of plain
    assert modes[: _Pace.PROBE] == ["medusa"] * _Pace.PROBE
    assert modes[_Pace.PROBE : start + _Pace.STAY] == ["plain"] * (start + _Pace.STAY - _Pace.PROBE)
    later = modes[start:]
    assert all(n == _Pace.PROBE for _, n in runs(later, "medusa"))
    assert later.count("medusa") <= 0.03 * len(later)
    assert pace.falling_back


def test_one_outlier_step_does_not_flip_the_decision():
    def fast_plain_once(mode, i):  # Medusa wins, but one plain step of the first probe is absurdly fast
        return (1, 1e-5) if mode == "plain" and i == _Pace.PROBE + 3 else speeds(1.3)(mode, i)

    modes = drive(_Pace(), 3 * _Pace.PROBE, fast_plain_once)
    assert modes[2 * _Pace.PROBE :] == ["medusa"] * _Pace.PROBE

    def stall_in_medusa(mode, i):  # plain wins, but one step of the first Medusa retry is absurdly fast
        return (2, 1e-5) if mode == "medusa" and i == 2 * _Pace.PROBE + _Pace.STAY + 2 else speeds(0.6)(mode, i)

    pace = _Pace()
    modes = drive(pace, 200, stall_in_medusa)
    assert pace.falling_back and runs(modes[_Pace.PROBE :], "medusa")[0][1] == _Pace.PROBE

    pace = _Pace()  # one Medusa step stalls (the machine was busy): still Medusa
    modes = drive(pace, 100, lambda mode, i: (2, 1.0) if mode == "medusa" and i == 3 else speeds(1.3)(mode, i))
    assert not pace.falling_back and all(n == _Pace.PROBE for _, n in runs(modes, "plain"))


def test_returns_to_medusa_when_it_becomes_faster():
    change = 100
    pace = _Pace()
    modes = drive(pace, 400, lambda mode, i: speeds(0.6 if i < change else 1.5)(mode, i))
    assert modes[change - 1] == "plain"
    back = next(start for start, n in runs(modes, "medusa") if start >= change)
    assert back - change <= 2 * _Pace.STAY / 0.6  # at the next retry: the second stretch, times plain's lead
    after = modes[back:]
    assert all(n == _Pace.PROBE for _, n in runs(after, "plain")) and after.count("plain") < 0.1 * len(after)
    assert not pace.falling_back


def test_every_answer_measures_plain_at_its_own_context_right_after_its_first_medusa_steps():
    for medusa_lead in (1.3, 0.6):  # whether Medusa or plain is faster, the first probe comes at once
        pace = _Pace()
        modes = drive(pace, 40, speeds(medusa_lead))
        assert modes[: 2 * _Pace.PROBE] == ["medusa"] * _Pace.PROBE + ["plain"] * _Pace.PROBE
        assert pace.plain_rate == pytest.approx(100.0) and pace.falling_back == (medusa_lead < 1)


def test_an_answer_that_starts_in_plain_probes_medusa_at_once_and_keeps_the_faster():
    for medusa_lead, kept in ((1.3, "medusa"), (0.6, "plain")):
        pace = _Pace("plain")
        modes = drive(pace, 60, speeds(medusa_lead))
        assert modes[: 2 * _Pace.PROBE] == ["plain"] * _Pace.PROBE + ["medusa"] * _Pace.PROBE
        assert modes[2 * _Pace.PROBE] == kept and pace.falling_back == (kept == "plain")


def test_a_lucky_stretch_of_hits_does_not_decide():
    """Medusa at 1.5x a plain step's time accepts 1 token a step, then its heads hit 7 times in a row: over the
    answer it is still slower than plain (the tokens are averaged over the latest 64 steps, not the short run)."""
    pace = _Pace()
    for _ in range(60):
        pace.record("medusa", 1, 1.5 * PLAIN)
    for _ in range(_Pace.PROBE):
        pace.record("plain", 1, PLAIN)
    for _ in range(_Pace.PROBE):
        pace.record("medusa", 3, 1.5 * PLAIN)
    assert pace.rate("medusa") == pytest.approx((57 + 7 * 3) / 64 / (1.5 * PLAIN))
    assert pace.rate("medusa") < pace.rate("plain") == pytest.approx(1 / PLAIN)


def test_steps_without_tokens_or_time_wait_for_enough_timed_steps():
    pace = _Pace()
    modes = drive(pace, 20, lambda mode, i: (0, 0.0) if i < 5 else speeds(1.3)(mode, i))
    assert modes.index("plain") == 5 + _Pace.MIN_SAMPLES  # Medusa's rate needs six timed steps


# -- through a real Generator ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", vocab_size=len(TOK), seed=5, eos_token_id=None)


def scripted_clock(monkeypatch, gen: Generator, medusa_cost: Callable[[int], float]) -> None:
    """Step times from a script: plain steps cost PLAIN, the n-th Medusa step ``medusa_cost(n)``."""
    now = [0.0]
    counts = {"medusa": 0}
    monkeypatch.setattr(generator_module, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    plain_step, medusa_step = gen._plain_step, gen._medusa_step

    def timed_plain(*args):
        now[0] += PLAIN
        return plain_step(*args)

    def timed_medusa(*args):
        counts["medusa"] += 1
        now[0] += medusa_cost(counts["medusa"])
        return medusa_step(*args)

    monkeypatch.setattr(gen, "_plain_step", timed_plain)
    monkeypatch.setattr(gen, "_medusa_step", timed_medusa)


@pytest.mark.parametrize("lookup", [0, 4])
def test_fallback_both_ways_keeps_greedy_output(monkeypatch, model, lookup):
    prompt = TOK("The quick brown fox jumps over the lazy dog")["input_ids"]
    n = 150
    plain = Generator(model, TOK, eos_ids=set()).generate(prompt, GenerationConfig(max_new_tokens=n, medusa=False))
    gen = Generator(model, TOK, random_heads(model, seed=3), eos_ids=set())
    # Medusa is about 2x slower than plain over its first run (fallback), then 5x faster (back to Medusa).
    scripted_clock(monkeypatch, gen, lambda k: 2 * PLAIN if k <= _Pace.PROBE else PLAIN / 5)
    config = GenerationConfig(max_new_tokens=n, auto_fallback=True, prompt_lookup=lookup)
    events = list(gen.stream(prompt, config))
    stats, steps = events[-1], events[:-1]
    assert stats.token_ids == plain.token_ids
    kinds = "".join("F" if e.fallback else "p" if e.tree_size == 1 else "M" for e in steps if e.accepted)
    fell_back = re.match(f"M{{{_Pace.PROBE}}}p{{{_Pace.PROBE}}}(F+)M", kinds)  # Medusa's run, a probe, fallback
    assert fell_back and len(fell_back[1]) >= _Pace.STAY
    assert "F" not in kinds[fell_back.end() :]  # Medusa won its retry and stays
    assert stats.fallback_steps == kinds.count("F") == len(fell_back[1])


def test_the_next_turn_starts_in_the_mode_the_last_answer_ended_preferring(monkeypatch, model):
    """A conversation only grows, and with it the cost of a tree's rows: once plain decoding won, the next turn
    starts in plain (probing Medusa at once); a new conversation starts with Medusa."""
    gen = Generator(model, TOK, random_heads(model, seed=3), eos_ids=set())
    scripted_clock(monkeypatch, gen, lambda k: 3 * PLAIN)  # Medusa is slower throughout
    config = GenerationConfig(max_new_tokens=60, auto_fallback=True)

    def kinds(prompt):
        events = [e for e in gen.stream(prompt, config) if isinstance(e, StepEvent) and e.accepted]
        return "".join("M" if e.tree_size > 1 else "p" for e in events)

    first = kinds(TOK("The quick brown fox")["input_ids"])
    assert first.startswith("M") and gen._preferred == "plain"
    # The next turn: plain, a probe of Medusa at its own context, then a stretch of plain.
    second = kinds(gen._cached_ids + TOK(" and then")["input_ids"])
    probe = "p" * _Pace.PROBE + "M" * _Pace.PROBE
    assert second.startswith(probe) and "M" not in second[len(probe) :]
    assert kinds(TOK("Another chat altogether, about the weather")["input_ids"]).startswith("M" * _Pace.PROBE + "p")


def test_auto_fallback_output_equals_plain_greedy_on_the_machine(model):
    prompt = TOK("def add(a, b):")["input_ids"]
    plain = Generator(model, TOK, eos_ids=set()).generate(prompt, GenerationConfig(max_new_tokens=60, medusa=False))
    gen = Generator(model, TOK, random_heads(model, seed=4), eos_ids=set())
    stats = gen.generate(prompt, GenerationConfig(max_new_tokens=60, auto_fallback=True, prompt_lookup=4))
    assert stats.token_ids == plain.token_ids


# -- the speedup gauge ---------------------------------------------------------------------------------


def test_the_speedup_divides_by_plain_steps_of_the_same_answer_and_says_when_it_is_rough():
    def medusa_step(t=0.02):
        return StepEvent([0, 1, 2], "abc", 3, 8, t, [False, True, True])

    def plain_step(t):
        return StepEvent([0], "a", 1, 1, t, [False])

    g = Gauges(baseline_tps=500.0)  # the load-time run, on an idle machine: not this answer's conditions
    for _ in range(4):
        g.add(medusa_step())
    assert g.speedup_note == FEW_STEPS and gauge_parts(g, True, 500.0)["speedup"].startswith("speedup ~")
    g.add(plain_step(0.0001))  # a probe's first step only picks a token: not timed
    for t in (0.01, 0.01, 0.5, 0.01, 0.011, 0.01):  # one stalled step does not move the median
        g.add(plain_step(t))
    for _ in range(20):
        g.add(medusa_step())
    assert g.plain_tps == pytest.approx(100.0) and g.baseline == g.plain_tps
    # 79 tokens in 24 Medusa steps at their median 0.02 s and 7 plain steps at the plain speed: stalls left out
    assert g.speedup == pytest.approx(79 / (24 * 0.02 + 7 / 100.0) / 100.0) and g.speedup_note is None
    assert g.tokens_per_s < 100.0 * g.speedup  # the answer's own mean rate keeps the stall
    parts = gauge_parts(g, True, 500.0)
    assert parts["speedup"] == f"speedup {g.speedup:.2f}×" and parts["plain"] == "plain 100.0 tok/s"
    restored = Gauges.from_dict(g.as_dict())
    assert restored.speedup == pytest.approx(g.speedup, rel=1e-3) and restored.speedup_note is None
    assert f"· {g.speedup:.2f}× plain ·" in summary_lines(g.as_dict())[0]

    other = Gauges(baseline_tps=50.0)  # no plain steps timed in this answer
    for _ in range(20):
        other.add(medusa_step())
    assert other.speedup_note == EARLIER_PLAIN
    parts = gauge_parts(other, True, 50.0)
    assert parts["speedup"] == f"speedup ~{other.speedup:.2f}×" and parts["plain"] == "plain 50.0 tok/s (timed earlier)"
    assert f"× plain ({EARLIER_PLAIN})" in summary_lines(other.as_dict())[0]
