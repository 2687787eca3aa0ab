import pytest

from pipeline.config import ConfigError, load_config


def test_defaults_and_overrides():
    cfg = load_config(overrides=["method.base=sclip", "method.rcs.layers=[3, 4]", "inference.prob_thd=0.2"])
    assert cfg.method.base == "sclip"
    assert cfg.method.rcs.layers == [3, 4]
    assert cfg.inference.prob_thd == 0.2
    assert cfg.method.sfr.enabled is True


@pytest.mark.parametrize("override,message", [
    ("method.bse=x", "unknown key method.bse"),
    ("method.base=foo", "method.base: 'foo' is not one of"),
    ("method.rcs.enabled=maybe", "method.rcs.enabled: expected true or false"),
    ("inference.slide_crop=1.5", "inference.slide_crop: expected an integer"),
    ("precision=half", "precision"),
    ("batch_size", "is not KEY=VALUE"),
])
def test_bad_keys_and_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_config_file_is_merged(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method:\n  sfr: {tau: 1.5}\nbatch_size: 3\n")
    cfg = load_config(path, ["batch_size=4"])
    assert cfg.method.sfr.tau == 1.5 and cfg.method.sfr.lam == 0.7
    assert cfg.batch_size == 4


def test_fingerprint_tracks_label_settings_only():
    base = load_config().fingerprint()
    assert load_config(overrides=["batch_size=32", "ray.cpu_actors=7"]).fingerprint() == base
    assert load_config(overrides=["method.sfr.tau=1.0"]).fingerprint() != base
