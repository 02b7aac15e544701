"""Downloads through a real HTTP server on 127.0.0.1 speaking the Hub protocol (tests/hub_server.py)."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from medusa_chat import hub
from medusa_chat.catalog import resolve
from medusa_chat.engine.heads import MedusaHeads
from medusa_chat.engine.heads_io import HeadsError, load_heads

from .hub_server import GOOD_TOKEN, FakeHub

HIDDEN, VOCAB, K = 64, 4096, 3  # big enough that weight files span several 1 MiB chunks


def _tiny_llama(directory, **extra_config):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128, tie_word_embeddings=False,
        **extra_config,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    return model


def _heads(shared: bool = False) -> MedusaHeads:
    torch.manual_seed(1)
    heads = MedusaHeads(HIDDEN, VOCAB, K, shared_projection=shared)
    for p in heads.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return heads


class Evil:
    """Pickles to a call that would create a file if anything ever unpickled it unsafely."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def fake_hub(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("checkpoints")
    heads = _heads()
    state = {k: v.contiguous() for k, v in heads.state_dict().items()}
    heads_config = json.dumps({"base_model_name_or_path": "test/tiny-llama", "medusa_num_heads": 2,
                               "medusa_num_layers": 1}).encode()  # fmt: skip
    pt = root / "heads.pt"
    torch.save(state, pt)
    st = root / "heads.safetensors"
    save_file(state, str(st), metadata={"format": "pt"})

    base = _tiny_llama(root / "tiny-llama")
    full = _tiny_llama(root / "medusa2", medusa_num_heads=K, medusa_num_layers=1)
    shard = {k: v.contiguous() for k, v in full.state_dict().items()}
    shard |= {f"medusa_head.{k}": v for k, v in state.items()}
    save_file(shard, str(root / "medusa2" / "model.safetensors"), metadata={"format": "pt"})

    evil = root / "evil.pt"
    torch.save({"0.0.linear.weight": Evil(root / "pwned")}, evil)  # a real torch zip checkpoint

    with FakeHub() as server:
        server.add_dir("test/tiny-llama", root / "tiny-llama")
        server.add_dir("test/medusa2", root / "medusa2")
        server.add_repo("test/heads-pt", {"config.json": heads_config, "medusa_lm_head.pt": pt.read_bytes()})
        server.add_repo(
            "test/heads-st",
            {"config.json": heads_config, "medusa_lm_head.safetensors": st.read_bytes(), "README.md": b"# heads"},
        )
        server.add_repo("test/gated", {"config.json": heads_config, "medusa_lm_head.pt": pt.read_bytes()}, gated=True)
        server.add_repo("test/evil", {"config.json": heads_config, "medusa_lm_head.pt": evil.read_bytes()})
        server.add_repo(
            "test/huge", {"config.json": b"{}", "model.safetensors": b"x"}, model__safetensors=10**18
        )  # the API claims 1 EB
        server.root, server.heads, server.base = root, heads, base
        yield server


@pytest.fixture
def hub_env(fake_hub, tmp_path, monkeypatch):
    """Point huggingface_hub (via our hub module) at the fake server and a fresh cache."""
    fake_hub.use(monkeypatch)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("MEDUSA_CHAT_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    fake_hub.bytes_served.clear()
    fake_hub.ranges.clear()
    fake_hub.requests.clear()
    return fake_hub


def _blob_bytes(path) -> bytes:
    return path.resolve().read_bytes()


@pytest.mark.parametrize("repo", ["test/heads-pt", "test/heads-st", "test/medusa2"])
def test_each_head_format_downloads_and_loads_into_the_tiny_base(hub_env, repo):
    from transformers import AutoModelForCausalLM

    snapshot = hub.download(repo)
    files = hub.local_files(repo)
    assert files.heads_path == snapshot
    if repo != "test/medusa2":  # heads-only repos bring their base, named in their config
        assert files.model_dir == hub.snapshot_dir("test/tiny-llama")
        heads_file = "medusa_lm_head.pt" if repo.endswith("pt") else "medusa_lm_head.safetensors"
        assert sorted(p.name for p in snapshot.iterdir()) == ["config.json", heads_file]  # no README.md
    heads = load_heads(files.heads_path, HIDDEN, VOCAB)
    assert heads.num_heads == K  # from the weights; the config says 2
    for key, tensor in hub_env.heads.state_dict().items():
        torch.testing.assert_close(heads.state_dict()[key], tensor)
    base = AutoModelForCausalLM.from_pretrained(files.model_dir)
    with torch.no_grad():
        hidden = base.model(torch.tensor([[1, 2, 3]])).last_hidden_state
        logits = heads(hidden)
    assert logits.shape == (K, 1, 3, VOCAB)
    # the cache is the standard one: huggingface_hub finds the files without the network
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(repo, "config.json", cache_dir=hub.hub_cache_dir(), local_files_only=True)
    assert _blob_bytes(snapshot / "config.json") == Path(path).read_bytes()


def test_progress_events_cover_every_byte(hub_env):
    events = []
    hub.download("test/heads-st", progress=events.append)
    plan_total = sum(len(hub_env.repos[r].files[f]) for r, f in [
        ("test/heads-st", "config.json"), ("test/heads-st", "medusa_lm_head.safetensors"),
        ("test/tiny-llama", "config.json"), ("test/tiny-llama", "generation_config.json"),
        ("test/tiny-llama", "model.safetensors")])  # fmt: skip
    assert events[-1].done and events[-1].downloaded == events[-1].total == plan_total
    assert all(e.total == plan_total for e in events)
    downloaded = [e.downloaded for e in events]
    assert downloaded == sorted(downloaded)
    weights = [e for e in events if e.filename == "model.safetensors"]
    assert len(weights) >= 3 and weights[-1].file_bytes == weights[-1].file_total > 2 * hub.REPORT_BYTES
    assert all(e.rate > 0 and e.eta is not None for e in weights[1:])
    assert sum(hub_env.bytes_served.values()) == plan_total


def test_cancelled_download_resumes_without_refetching(hub_env):
    cancel = threading.Event()
    key = "test/tiny-llama/model.safetensors"
    size = len(hub_env.repos["test/tiny-llama"].files["model.safetensors"])

    def stop_after_first_chunk(event):
        if event.filename == "model.safetensors" and event.file_bytes >= hub.REPORT_BYTES:
            cancel.set()

    with pytest.raises(hub.DownloadCancelled):
        hub.download("test/tiny-llama", progress=stop_after_first_chunk, cancel=cancel)
    partial = list((hub.hub_cache_dir() / "models--test--tiny-llama" / "blobs").glob("*.incomplete"))
    assert len(partial) == 1
    kept = partial[0].stat().st_size
    assert hub.REPORT_BYTES <= kept < size
    assert not hub.cached_state("test/tiny-llama").complete
    assert hub.plan("test/tiny-llama").cached_bytes >= kept

    hub_env.bytes_served.clear()
    snapshot = hub.download("test/tiny-llama")
    assert hub_env.ranges == [(key, f"bytes={kept}-")]
    assert hub_env.bytes_served[key] == size - kept  # the kept bytes were not fetched again
    expected = hashlib.sha256(hub_env.repos["test/tiny-llama"].files["model.safetensors"]).hexdigest()
    assert hashlib.sha256(_blob_bytes(snapshot / "model.safetensors")).hexdigest() == expected


def test_transfer_cut_off_midway_continues_with_a_range_request(hub_env):
    key = "test/tiny-llama/model.safetensors"
    size = len(hub_env.repos["test/tiny-llama"].files["model.safetensors"])
    hub_env.cuts[key] = 100_000
    snapshot = hub.download("test/tiny-llama")
    assert hub_env.ranges == [(key, "bytes=100000-")]
    assert hub_env.bytes_served[key] == size
    assert _blob_bytes(snapshot / "model.safetensors") == hub_env.repos["test/tiny-llama"].files["model.safetensors"]


def test_gated_repo_needs_a_token_and_honours_hf_token(hub_env, monkeypatch):
    with pytest.raises(hub.GatedRepoError, match="hf auth login") as info:
        hub.download("test/gated")
    assert "HF_TOKEN" in str(info.value)
    monkeypatch.setenv("HF_TOKEN", GOOD_TOKEN)
    assert (hub.download("test/gated") / "medusa_lm_head.pt").is_file()


def test_unknown_repo_and_revision_are_named(hub_env):
    with pytest.raises(hub.RepoNotFound, match="test/nope"):
        hub.download("test/nope")
    with pytest.raises(hub.RevisionNotFound, match="test/heads-st"):
        hub.download("test/heads-st@v9")


def test_disk_space_is_checked_before_any_byte_is_fetched(hub_env):
    with pytest.raises(hub.DiskFullError, match="free"):
        hub.download("test/huge")
    assert not [r for r in hub_env.requests if "/resolve/" in r[1]]
    assert not hub_env.bytes_served


def _user_entry(name="tiny"):
    from medusa_chat.paths import user_models_dir

    (user_models_dir() / f"{name}.toml").write_text(
        f'name = "{name}"\nrepo_id = "test/heads-st"\nhead_format = "medusa1-heads"\n'
        'base_repo_id = "test/tiny-llama"\ndownload_size = 5000000\n'
    )
    return resolve(name)


def test_offline_mode_lists_cached_models_and_says_how_to_download(hub_env, monkeypatch):
    spec = _user_entry()
    assert hub.cached_state(spec).complete is False
    hub.download(spec)
    state = hub.cached_state(spec)
    assert state.complete and state.size_on_disk > 2 * hub.REPORT_BYTES and state.to_download == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.OfflineError, match="models download") as info:
        hub.download("test/medusa2")
    assert "tiny" in str(info.value)
    assert not [r for r in hub_env.requests if "medusa2" in r[1]]
    assert hub.local_files(spec).heads_path == state.path  # cached models still resolve offline


def test_unreachable_hub_is_reported_as_offline(hub_env, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{s.getsockname()[1]}")
    with pytest.raises(hub.OfflineError, match="cannot reach"):
        hub.download("test/medusa2")


def test_remove_deletes_the_repos_from_the_cache(hub_env):
    spec = _user_entry()
    hub.download(spec)
    freed = hub.remove(spec, keep_base=True)
    assert freed > 0 and hub.snapshot_dir("test/heads-st") is None and hub.snapshot_dir("test/tiny-llama")
    assert hub.remove(spec) > 0 and hub.snapshot_dir("test/tiny-llama") is None
    state = hub.cached_state(spec)
    assert not state.complete and state.size_on_disk == 0 and state.to_download == 5_000_000
    with pytest.raises(hub.HubError, match=r"not \(fully\) downloaded"):
        hub.local_files(spec)


def test_malicious_pickle_is_refused_and_never_runs(hub_env):
    snapshot = hub.download("test/evil")
    with pytest.raises(HeadsError, match="refused"):
        load_heads(snapshot, HIDDEN, VOCAB)
    assert not (hub_env.root / "pwned").exists()


def test_heads_for_another_base_give_a_named_error(hub_env):
    hub.download("test/heads-st")
    with pytest.raises(HeadsError, match="hidden size 64 but the base model has 32"):
        load_heads(hub.local_files("test/heads-st").heads_path, 32, VOCAB)
    with pytest.raises(HeadsError, match="project onto 4096 tokens"):
        load_heads(hub.local_files("test/heads-st").heads_path, HIDDEN, 100)


def test_cli_download_list_info_remove(hub_env):
    from typer.testing import CliRunner

    from medusa_chat.cli import app

    _user_entry()
    runner = CliRunner()
    result = runner.invoke(app, ["models", "download", "tiny"])
    assert result.exit_code == 0, result.output
    assert "[##############################]" in result.output and "tiny is ready" in result.output

    listing = json.loads(runner.invoke(app, ["models", "list", "--json"]).output)
    row = next(r for r in listing["models"] if r["name"] == "tiny")
    assert row["cached"] and row["size_on_disk"] > 2 * hub.REPORT_BYTES and row["to_download"] == 0
    assert set(row["memory"]) == {"fp16", "8-bit", "4-bit"}
    assert listing["device"]["kind"] in ("cpu", "cuda")
    assert "tiny" in runner.invoke(app, ["models", "list"]).output

    info = runner.invoke(app, ["models", "info", "tiny", "--remote"])
    assert info.exit_code == 0 and "test/tiny-llama/model.safetensors" in info.output
    assert "still to download 0 B" in info.output
    runs_as = next(line for line in info.output.splitlines() if line.startswith("runs as"))
    assert "cpu fp32" in runs_as or "cuda fp16" in runs_as  # dense: 4-bit by default only for the default's GGUF

    removed = runner.invoke(app, ["models", "remove", "tiny", "--yes"])
    assert removed.exit_code == 0 and "freed" in removed.output
    assert not hub.cached_state("tiny").complete


def test_cli_reports_hub_errors_cleanly(hub_env):
    from typer.testing import CliRunner

    from medusa_chat.cli import app

    result = CliRunner().invoke(app, ["models", "download", "test/gated"])
    assert result.exit_code == 1 and "hf auth login" in result.output
    result = CliRunner().invoke(app, ["models", "info", "no-such-thing"])
    assert result.exit_code == 1 and "not a catalogue model" in result.output


def test_ctrl_c_stops_the_cli_download_and_a_rerun_resumes(hub_env, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    hub_env.slow = 0.1  # about 640 kB/s: slow enough to interrupt on a busy machine
    env = {**os.environ, "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1"}
    command = [sys.executable, "-m", "medusa_chat.cli", "models", "download", "test/tiny-llama"]
    blobs = hub.hub_cache_dir() / "models--test--tiny-llama" / "blobs"
    proc = subprocess.Popen(  # Ctrl-C as in a terminal, even when the suite runs as a background job (SIGINT ignored)
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 30
    while not any(p.stat().st_size > 0 for p in blobs.glob("*.incomplete")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "cancelled" in output and "to resume" in output, output
    kept = next(blobs.glob("*.incomplete")).stat().st_size
    assert kept > 0

    hub_env.slow = 0.0
    hub_env.ranges.clear()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert hub_env.ranges == [("test/tiny-llama/model.safetensors", f"bytes={kept}-")]


def test_file_selection_skips_duplicates_and_extras():
    listing = [
        "README.md", ".gitattributes", "config.json", "consolidated.safetensors", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "tokenizer.model",
        "tokenizer_config.json", "training_args.bin",
    ]  # fmt: skip
    assert hub.select_files(listing, "model") == [
        "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json", "tokenizer.model", "tokenizer_config.json",
    ]  # fmt: skip
    bins = ["config.json", "pytorch_model-00001-of-00002.bin", "pytorch_model.bin.index.json", "training_args.bin"]
    assert hub.select_files(bins, "model") == bins[:3]
    heads = ["config.json", "medusa_lm_head.pt", "medusa_lm_head.safetensors", "README.md"]
    assert hub.select_files(heads, "heads") == ["config.json", "medusa_lm_head.safetensors"]
