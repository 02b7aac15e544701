"""The scriptable commands, run in-process on a tiny model directory."""

import json

from typer.testing import CliRunner

from medusa_chat.cli import app

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def test_generate_json_has_the_contract_keys_and_medusa_matches_plain(tiny_model_dir):
    common = ("generate", "Say something", "--model", tiny_model_dir, "--max-new-tokens", 24, "--dtype", "fp32")
    common = (*common, "--json")
    medusa = invoke(*common)
    assert medusa.exit_code == 0, medusa.output
    out = json.loads(medusa.stdout.strip().splitlines()[-1])
    assert {"text", "token_ids", "new_tokens", "steps", "mean_accepted", "tokens_per_s", "medusa"} <= set(out)
    assert out["medusa"] is True and out["new_tokens"] == len(out["token_ids"]) > 0
    plain = json.loads(invoke(*common, "--no-medusa").stdout.strip().splitlines()[-1])
    assert plain["medusa"] is False and plain["steps"] == plain["new_tokens"]
    assert plain["token_ids"] == out["token_ids"]


def test_generate_reports_bad_input_without_a_traceback(tiny_model_dir, tmp_path):
    missing = invoke("generate", "hi", "--model", tmp_path / "nope")
    assert missing.exit_code == 1 and "error:" in missing.output and "Traceback" not in missing.output
    bad_tree = invoke("generate", "hi", "--model", tiny_model_dir, "--tree", "mc_sim_7b_63x")
    assert bad_tree.exit_code == 1 and "unknown tree" in bad_tree.output
    no_heads = invoke("generate", "hi", "--model", tiny_model_dir, "--heads", tmp_path)
    assert no_heads.exit_code == 1 and "no Medusa heads" in no_heads.output
    quant = invoke("generate", "hi", "--model", tiny_model_dir, "--quant", "4bit", "--engine", "transformers")
    assert quant.exit_code == 1 and "lean decoder" in quant.output and "Traceback" not in quant.output
    dense = invoke("generate", "hi", "--model", tiny_model_dir, "--quant", "4bit", "--dtype", "fp32")
    assert dense.exit_code == 1 and "computes in bf16" in dense.output


def bench_report(model_dir, tmp_path, prompts: list[str], *args):
    """Run ``bench`` on ``prompts`` (greedy, fp32) with ``args``; (the CLI result, the JSON report)."""
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": p}) for p in prompts))
    out = tmp_path / "report.json"
    result = invoke("bench", "--model", model_dir, "--prompts", path, "--dtype", "fp32", "--json", out, *args)
    assert result.exit_code == 0, result.output
    return result, json.loads(out.read_text())


def test_bench_json_has_every_summary_key(tiny_model_dir, tmp_path):
    result, report = bench_report(
        tiny_model_dir, tmp_path, ["Hello there", "Count to five", "Why?"], "--max-new-tokens", 6,
        "--methods", "plain,medusa,hf,hf_lookup,hybrid,tf_plain,tf_medusa",
    )
    summary = report["summary"]
    for key in ("medusa_tok_s", "plain_tok_s", "hf_tok_s", "hf_lookup_tok_s", "speedup_vs_plain", "speedup_vs_hf",
                "mean_accepted", "step_overhead", "identical_fraction", "tf_plain_tok_s", "plain_vs_tf_plain"):
        assert isinstance(summary[key], float), key
    assert summary["settings"]["engine"] == "lean"  # the CPU default; hf/tf methods ran on a transformers copy
    assert summary["peak_rss_mb"]["lean (load)"] > 0
    assert summary["identical_fraction"] == 1.0
    assert {"cpu", "threads", "torch"} <= set(summary["machine"])
    assert summary["settings"]["max_new_tokens"] == 6 and summary["settings"]["prompts"] == 3
    assert len(report["prompts"]) == 3 and all(r["identical"] for r in report["prompts"])
    assert "speedup_vs_plain" in result.stdout


def test_bench_rejects_unknown_methods_and_bad_prompt_files(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    result = invoke("bench", "--model", tiny_model_dir, "--prompts", bad)
    assert result.exit_code == 1 and "bad.jsonl:1" in result.output
    result = invoke("bench", "--model", tiny_model_dir, "--prompts", bad, "--methods", "plain,warp")
    assert result.exit_code == 1 and "unknown method" in result.output


def test_bench_copy_tasks_are_two_turn_chats(tiny_model_dir, tmp_path):
    _, report = bench_report(
        tiny_model_dir, tmp_path, ["Hello there", "Count to five"], "--max-new-tokens", 6,
        "--copy-tasks", "--methods", "medusa,hybrid,plain",
    )
    rows = report["prompts"]
    assert [r["turns"] for r in rows] == [2, 2]
    assert rows[0]["last"] == "Repeat your previous answer exactly."
    assert all(r["hybrid_identical"] and r["identical"] for r in rows)


def test_bench_profile_splits_each_step_into_sections_that_add_up(tiny_model_dir, tmp_path):
    result, report = bench_report(
        tiny_model_dir, tmp_path, ["Hello there", "Count to five"], "--max-new-tokens", 8,
        "--methods", "plain,medusa", "--profile",
    )
    summary = report["summary"]
    plain, medusa = summary["profile"]["plain"], summary["profile"]["medusa"]
    assert {"forward", "logits", "acceptance", "other", "total"} <= set(plain) and "tree forward" not in plain
    assert {"heads", "tree forward", "logits", "acceptance", "compaction", "other"} <= set(medusa)
    for sections in (plain, medusa):
        parts = sum(v for k, v in sections.items() if k != "total")
        assert sections["total"] > 0 and abs(parts - sections["total"]) < 0.01 * sections["total"] + 1e-3
    assert "tree forward" in result.stdout and "ms per step" in result.stdout
