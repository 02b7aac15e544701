import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medusa_chat import settings as s


def test_defaults_round_trip(tmp_path):
    path = tmp_path / "config.toml"
    saved = s.Settings(temperature=0.7, top_p=0.9, max_new_tokens=64, tree="cpu_8", system_prompt='Say "hi"\n\tok',
                       theme="medusa-light", medusa=False, keymap={"chat.compare": "f5"})
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
    assert (new.temperature, new.max_new_tokens, new.tree) == (0.5, 100, "cpu_8")


def test_bad_file_falls_back_to_defaults(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("this is = = not toml")
    settings, problems = s.load(path)
    assert settings == s.Settings() and problems
    path.write_text('theme = "medusa-light"\nbogus = 1\n[generation]\ntemperature = 9.0\n')
    settings, problems = s.load(path)
    assert settings.theme == "medusa-light" and settings.temperature == 0.0
    assert any("bogus" in p for p in problems) and any("temperature" in p for p in problems)


@given(st.text(), st.dictionaries(st.text(min_size=1), st.text(), max_size=3))
def test_toml_writer_round_trips_any_text(text, keymap):
    doc = {"system_prompt": text, "keymap": keymap}
    assert tomllib.loads(s.dumps(doc)) == doc


def test_engine_options_are_validated_and_reach_the_generation_config():
    from medusa_chat.engine.config import GenerationConfig
    from medusa_chat.settings import Settings, SettingsError, parse_form

    new = parse_form(Settings(), {"acceptance": "exact", "prompt_lookup": "4", "auto_fallback": False})
    config = GenerationConfig(**new.generation_kwargs(), medusa=True)
    assert (config.acceptance, config.prompt_lookup, config.auto_fallback) == ("exact", 4, False)
    with pytest.raises(SettingsError) as caught:
        parse_form(Settings(), {"acceptance": "nucleus", "prompt_lookup": "-1"})
    assert set(caught.value.errors) == {"acceptance", "prompt_lookup"}
