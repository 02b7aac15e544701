import inspect
import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medusa_chat import settings as s
from medusa_chat.engine.config import GenerationConfig


def test_defaults_round_trip(tmp_path):
    path = tmp_path / "config.toml"
    generation = GenerationConfig.for_chat(temperature=0.7, top_p=0.9, max_new_tokens=64, medusa=False)
    saved = s.Settings(generation, tree="cpu_8", system_prompt='Say "hi"\n\tok', theme="medusa-light",
                       keymap={"chat.compare": "f5"})
    s.save(saved, path)
    loaded, problems = s.load(path)
    assert problems == []
    assert loaded == saved
    assert "[generation]" in path.read_text() and "[keymap]" in path.read_text()


def test_default_location_uses_config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDUSA_CHAT_CONFIG_DIR", str(tmp_path / "cfg"))
    path = s.save(s.Settings(theme="medusa-high-contrast"))
    assert path == tmp_path / "cfg" / "config.toml"
    assert s.load()[0].theme == "medusa-high-contrast"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("temperature", "-1", "between 0 and 2"),
        ("temperature", "abc", "must be a number"),
        ("temperature", "nan", "finite"),
        ("top_p", "0", "in (0, 1]"),
        ("top_p", "1.5", "in (0, 1]"),
        ("max_new_tokens", "0", "between 1"),
        ("max_new_tokens", "2.5", "integer"),
        ("max_new_tokens", "", "empty"),
        ("posterior_threshold", "2", "between 0 and 1"),
        ("posterior_alpha", "-0.1", "between 0 and 1"),
        ("tree", "no-such-tree", "unknown tree"),
    ],
)
def test_invalid_values_are_rejected(field, value, message):
    with pytest.raises(s.SettingsError) as info:
        s.parse_form(s.Settings(), {field: value})
    assert message in info.value.errors[field]


def test_form_parses_text():
    new = s.parse_form(s.Settings(), {"temperature": "0.5", "max_new_tokens": "100", "tree": "cpu_8"})
    assert (new.generation.temperature, new.generation.max_new_tokens, new.tree) == (0.5, 100, "cpu_8")


def test_bad_file_falls_back_to_defaults(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("this is = = not toml")
    settings, problems = s.load(path)
    assert settings == s.Settings() and problems
    path.write_text('theme = "medusa-light"\nbogus = 1\n[generation]\ntemperature = 9.0\n')
    settings, problems = s.load(path)
    assert settings.theme == "medusa-light" and settings.generation.temperature == 0.0
    assert any("bogus" in p for p in problems) and any("temperature" in p for p in problems)


@given(st.text(), st.dictionaries(st.text(min_size=1), st.text(), max_size=3))
def test_toml_writer_round_trips_any_text(text, keymap):
    doc = {"system_prompt": text, "keymap": keymap}
    assert tomllib.loads(s.dumps(doc)) == doc


def test_engine_options_are_validated_and_reach_the_generation_config():
    from medusa_chat.settings import Settings, SettingsError, parse_form

    new = parse_form(Settings(), {"acceptance": "exact", "prompt_lookup": "4", "auto_fallback": False})
    config = new.generation
    assert (config.acceptance, config.prompt_lookup, config.auto_fallback) == ("exact", 4, False)
    with pytest.raises(SettingsError) as caught:
        parse_form(Settings(), {"acceptance": "nucleus", "prompt_lookup": "-1"})
    assert set(caught.value.errors) == {"acceptance", "prompt_lookup"}


@pytest.mark.parametrize(
    "raw",
    [
        b'system_prompt = "You are a pirate"\n[keymap]\nchat.send = "ctrl+j"\n[generation\ntemperature = 0.7\n',
        'system_prompt = "caf\u00e9"\n'.encode("latin-1"),  # not UTF-8
    ],
)
def test_an_unparseable_file_is_backed_up_byte_for_byte_and_never_lost(tmp_path, raw):
    path = tmp_path / "config.toml"
    path.write_bytes(raw)
    settings, problems = s.load(path)
    assert settings == s.Settings()
    backup = tmp_path / "config.toml.bak"
    assert backup.read_bytes() == raw
    assert len(problems) == 1 and str(backup) in problems[0] and "\n" not in problems[0]
    s.save(s.Settings(theme="medusa-light"), path)  # the app saves defaults later on
    assert backup.read_bytes() == raw and s.load(path)[0].theme == "medusa-light"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml", "config.toml.bak"]


def test_a_save_over_an_unparseable_file_backs_it_up_first(tmp_path):
    path = tmp_path / "config.toml"
    (tmp_path / "config.toml.bak").write_bytes(b"an older backup")
    path.write_bytes(b"broken = = toml")
    s.save(s.Settings(), path)
    assert (tmp_path / "config.toml.bak").read_bytes() == b"an older backup"
    assert (tmp_path / "config.toml.bak.1").read_bytes() == b"broken = = toml"


def test_save_keeps_unknown_keys_and_tables(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(
        'future_option = "on"\nwhen = 2024-05-01T10:00:00Z\ntheme = "medusa-light"\n'
        "[generation]\ntemperature = 0.5\nmin_p = 0.05\n"
        '[plugins.spell]\nlang = "en"\nlists = [1, 2]\n[[servers]]\nurl = "a"\n[[servers]]\nurl = "b"\n'
    )
    settings, problems = s.load(path)
    assert any("future_option" in p for p in problems)
    assert settings.generation.temperature == 0.5 and settings.theme == "medusa-light"
    s.save(s.Settings(GenerationConfig.for_chat(temperature=0.2), theme="medusa-dark"), path)
    data = tomllib.loads(path.read_text())
    assert data["future_option"] == "on" and data["when"].year == 2024
    assert data["generation"]["min_p"] == 0.05 and data["generation"]["temperature"] == 0.2
    assert data["plugins"] == {"spell": {"lang": "en", "lists": [1, 2]}}
    assert data["servers"] == [{"url": "a"}, {"url": "b"}]
    assert data["theme"] == "medusa-dark"
    assert not (tmp_path / "config.toml.bak").exists()


def test_an_unreadable_file_is_not_overwritten(tmp_path):
    path = tmp_path / "config.toml"
    path.mkdir()  # unreadable as a file, whoever runs the test
    settings, problems = s.load(path)
    assert settings == s.Settings() and "will not be overwritten" in problems[0]
    with pytest.raises(OSError, match="not overwriting"):
        s.save(s.Settings(), path)
    assert path.is_dir()


def test_the_form_and_the_file_read_the_generation_config_s_own_ranges():
    from medusa_chat.engine.config import FIELDS
    from medusa_chat.tui.screens.settings import NUMBER_FIELDS, hint

    for name, _, note in NUMBER_FIELDS:
        bounds = FIELDS[name].metadata["bounds"]
        assert bounds.text in hint(name, note)
        too_big = str(bounds.high + 1)
        with pytest.raises(s.SettingsError) as caught:
            s.parse_form(s.Settings(), {name: too_big})
        assert caught.value.errors[name] == f"must be {bounds.text}"
        with pytest.raises(ValueError, match=name):
            GenerationConfig(**{name: bounds.kind(bounds.high + 1)})


def test_the_app_and_generate_share_one_set_of_defaults():
    from medusa_chat.cli.generate import generate

    chat = GenerationConfig.for_chat()
    assert s.Settings().generation == chat and (chat.prompt_lookup, chat.auto_fallback) == (10, True)
    defaults = {p.name: p.default for p in inspect.signature(generate).parameters.values()}
    assert (defaults["lookup"], defaults["auto_fallback"]) == (chat.prompt_lookup, chat.auto_fallback)
    assert (defaults["temperature"], defaults["top_p"]) == (chat.temperature, chat.top_p)
