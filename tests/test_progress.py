"""Load progress: stage counts as strings, one console bar per stage, transformers' loops counted and quiet."""

from __future__ import annotations

import io
import re
import types

from medusa_chat.cli.console import ConsoleProgress
from medusa_chat.progress import count_text, parse_count, progress_line, stage
from medusa_chat.quiet import counted_loop


def run_stages(progress) -> None:
    for done in range(274):
        progress(count_text("converting x.gguf (once)", done, 273))
    progress("a note after the conversion")
    step = stage(progress, "loading m (fp32) on cpu", 3)
    step(1)
    progress("a note while loading")
    step(2)
    step(3)


def test_counts_are_parsed_and_shown_as_percentages():
    assert parse_count("calibrating the tree (once): 3/21") == ("calibrating the tree (once)", 3, 21)
    assert parse_count("tree cpu_8: measured on this machine") is None
    assert progress_line("loading m: 1/3") == "loading m 33%" and progress_line("a note") == "a note"


def test_a_terminal_gets_one_bar_per_stage_and_notes_as_lines():
    stream = io.StringIO()
    with ConsoleProgress(stream, bars=True) as progress:
        run_stages(progress)
    screen = [line.strip() for line in re.split(r"[\r\n]", stream.getvalue()) if line.strip()]
    finished = [line for line in screen if "100%" in line]
    assert [line.split(":")[0] for line in finished] == ["converting x.gguf (once)", "loading m (fp32) on cpu"]
    assert "273/273" in finished[0] and "3/3" in finished[1]
    assert "a note after the conversion" in screen and "a note while loading" in screen
    assert screen.index("a note after the conversion") > screen.index(finished[0])  # below the finished bar


def test_elsewhere_each_stage_is_one_line():
    stream = io.StringIO()
    with ConsoleProgress(stream) as progress:  # StringIO is no terminal: no bars
        run_stages(progress)
    assert stream.getvalue().splitlines() == [
        "converting x.gguf (once)",
        "a note after the conversion",
        "loading m (fp32) on cpu",
        "a note while loading",
    ]


def test_a_library_loop_is_counted_instead_of_drawn():
    def tqdm(items, desc=None):  # stands in for the library's bar
        raise AssertionError("the library's bar was drawn")

    library = types.SimpleNamespace(tqdm=tqdm)
    counts: list[tuple[int, int]] = []
    with counted_loop(library, lambda done, total: counts.append((done, total))):
        assert [x * 2 for x in library.tqdm(range(3), desc="Converting")] == [0, 2, 4]
    assert counts == [(0, 3), (1, 3), (2, 3), (3, 3)] and library.tqdm is tqdm
