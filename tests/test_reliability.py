"""Bad files and bad input end in one clear line (exit status 1), never a traceback; real files, real CLI."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from medusa_chat.cli import app
from medusa_chat.engine.heads_io import HEADS_PT, HEADS_SAFETENSORS, HeadsError, heads_state

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, *fragments: str) -> None:
    """Exit status 1, one ``error:`` line holding every fragment, and no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    assert "Traceback" not in result.output


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    """A private copy of the tiny model directory (heads in ./medusa) to damage."""
    return shutil.copytree(tiny_model_dir, tmp_path / "model")


def _generate(model, *extra):
    return invoke("generate", "hi", "--model", model, "--max-new-tokens", 2, "--dtype", "fp32", *extra)


# -- 11. corrupt weights --------------------------------------------------------------------------


def _heads_file(model):
    return model / "medusa" / HEADS_SAFETENSORS


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda f: f.write_bytes(b""), id="empty"),
        pytest.param(lambda f: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]), id="truncated"),
        pytest.param(lambda f: f.write_bytes(os.urandom(4096)), id="garbage"),
    ],
)
def test_a_damaged_heads_file_is_named(model_copy, damage):
    damage(_heads_file(model_copy))
    one_line_error(_generate(model_copy), str(_heads_file(model_copy)), "truncated or damaged", "again")


def test_a_directory_named_like_the_heads_file_is_named(model_copy):
    _heads_file(model_copy).unlink()
    _heads_file(model_copy).mkdir()
    one_line_error(_generate(model_copy), str(_heads_file(model_copy)), "is not a file")


def test_a_heads_config_that_is_a_json_list_is_named(model_copy):
    config = model_copy / "medusa" / "config.json"
    config.write_text("[1, 2, 3]")
    one_line_error(_generate(model_copy), str(config), "JSON list, not an object")


@pytest.mark.parametrize("keep", [0, 100, 5000])
def test_a_truncated_base_model_is_named(model_copy, keep):
    weights = model_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:keep])
    one_line_error(_generate(model_copy), str(weights), "truncated or damaged")


def test_a_base_config_that_is_a_json_list_is_named(model_copy):
    (model_copy / "config.json").write_text("[]")
    one_line_error(_generate(model_copy), str(model_copy / "config.json"), "JSON list")


def _one_head_with_its_own_projection(directory, original_lm_head):
    """A vLLM-layout export of one head with its own projection (not the base lm_head)."""
    torch.manual_seed(0)
    directory.mkdir()
    save_file(
        {"blocks.0.layers.0.weight": torch.randn(8, 8), "blocks.0.layers.0.bias": torch.zeros(8),
         "lm_heads.0.weight": torch.randn(20, 8)},
        str(directory / "model.safetensors"),
    )  # fmt: skip
    (directory / "config.json").write_text(json.dumps({"model_type": "medusa", "original_lm_head": original_lm_head}))
    return directory


@pytest.mark.parametrize("flag", ["false", "False", False, 0])
def test_original_lm_head_false_as_text_keeps_the_projection(tmp_path, flag):
    state = heads_state(_one_head_with_its_own_projection(tmp_path / "h", flag))
    assert "0.1.weight" in state  # before: bool("false") is True and the head's projection was dropped


@pytest.mark.parametrize("flag", ["true", True, 1])
def test_original_lm_head_true_drops_the_copy_of_the_base_projection(tmp_path, flag):
    assert "0.1.weight" not in heads_state(_one_head_with_its_own_projection(tmp_path / "h", flag))


@pytest.mark.parametrize("flag", ["maybe", "", 2, [True]])
def test_original_lm_head_junk_is_an_error(tmp_path, flag):
    with pytest.raises(HeadsError, match="original_lm_head must be true or false"):
        heads_state(_one_head_with_its_own_projection(tmp_path / "h", flag))


def test_both_heads_files_present_says_which_is_used(model_copy):
    from medusa_chat.loading import load_model

    heads_dir = model_copy / "medusa"
    torch.save(load_file(str(heads_dir / HEADS_SAFETENSORS)), heads_dir / HEADS_PT)
    phases = []
    loaded = load_model(str(model_copy), dtype="fp32", progress=phases.append)
    note = f"{heads_dir} holds both {HEADS_SAFETENSORS} and {HEADS_PT}: using {HEADS_SAFETENSORS}"
    assert note in loaded.notes and note in phases
    result = _generate(model_copy)
    assert result.exit_code == 0 and note in result.output


# -- 13. catalogue, directories ----------------------------------------------------------------------


def test_a_malformed_user_catalogue_file_is_skipped_with_a_warning(tiny_model_dir):
    from medusa_chat.paths import user_models_dir

    (user_models_dir() / "broken.toml").write_text('name = "broken"\nrepo_id = [')
    (user_models_dir() / "big.toml").write_text('name = "big"\nrepo_id = "a/b"\nparams = "big"\n')
    listing = invoke("models", "list")
    assert listing.exit_code == 0, listing.output
    assert "warning: skipped the catalogue entry" in listing.output and "broken.toml" in listing.output
    assert "big.toml: params must be a whole number" in listing.output
    assert "smollm2-135m-instruct" in listing.output
    assert _generate(tiny_model_dir).exit_code == 0  # --model still works


def test_generate_runs_when_the_config_and_data_directories_cannot_be_created(tiny_model_dir, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    monkeypatch.setenv("MEDUSA_CHAT_CONFIG_DIR", str(blocker / "config"))
    monkeypatch.setenv("MEDUSA_CHAT_DATA_DIR", str(blocker / "data"))
    result = _generate(tiny_model_dir)
    assert result.exit_code == 0, result.output
    assert invoke("models", "list").exit_code == 0


# -- 12. unbounded inputs ----------------------------------------------------------------------------


def test_huge_trees_are_refused_quickly():
    import time

    from medusa_chat.engine.presets import preset
    from medusa_chat.engine.tree import MAX_NODES, TreeError, build_tree, chain

    started = time.perf_counter()
    with pytest.raises(TreeError, match=f"100000 nodes but at most {MAX_NODES}"):
        preset("chain-100000")
    assert time.perf_counter() - started < 1.0
    wide = [[r] for r in range(10)] + [[a, b] for a in range(10) for b in range(10)]
    wide += [[a, b, c] for a in range(10) for b in range(10) for c in range(2)]  # 310 nodes
    with pytest.raises(TreeError, match="310 nodes"):
        build_tree(wide)
    assert build_tree(chain(MAX_NODES)).size == MAX_NODES + 1  # the cap itself is allowed


def test_a_tuned_tree_of_thousands_of_nodes_is_ignored_with_a_warning(tiny_model_dir):
    from medusa_chat.trees import tree_path, tuned_tree

    paths = [[a, b, c] for a in range(10) for b in range(10) for c in range(10)]
    paths += [[a, b] for a in range(10) for b in range(10)] + [[a] for a in range(10)]
    tree_path("tiny", "cpu", "fp32").write_text(json.dumps({"choices": paths}))
    with pytest.warns(UserWarning, match="1110 nodes"):
        assert tuned_tree("tiny", "cpu", "fp32") is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--tree", "chain-100000"), "at most 256 are allowed"),
        (("--lookup", 100000), "prompt_lookup (--lookup) must be between 0 (off) and 64"),
        (("--temperature", 1, "--top-p", 0), "top_p must be in (0, 1]"),
        (("--threads", -3), "--threads must be a positive number"),
    ],
)
def test_out_of_range_options_are_one_line_errors(tiny_model_dir, args, message):
    one_line_error(_generate(tiny_model_dir, *args), message)


def test_generation_config_refuses_bad_values():
    from medusa_chat.engine.config import GenerationConfig

    for bad in ({"prompt_lookup": 65}, {"top_p": 0.0}, {"temperature": float("nan")}, {"max_new_tokens": 0},
                {"acceptance": "fast"}, {"posterior_alpha": 2}):  # fmt: skip
        with pytest.raises(ValueError, match=next(iter(bad))):
            GenerationConfig(**bad)
    assert GenerationConfig(prompt_lookup=64, top_p=1e-6).prompt_lookup == 64


# -- 13. invalid text ------------------------------------------------------------------------------


def test_a_system_prompt_that_is_not_utf8_is_a_one_line_error(tiny_model_dir):
    one_line_error(invoke("generate", "hi", "--model", tiny_model_dir, "--system", "caf\udce9"), "--system", "UTF-8")


def test_a_prompt_that_is_not_utf8_is_a_one_line_error(tiny_model_dir):
    import subprocess
    import sys

    command = [sys.executable.encode(), b"-m", b"medusa_chat.cli", b"generate", b"hi \xff\xfe there", b"--model",
               str(tiny_model_dir).encode(), b"--max-new-tokens", b"2"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 1 and "Traceback" not in stderr
    assert "error: the prompt is not valid UTF-8 text (at character 4)" in stderr
