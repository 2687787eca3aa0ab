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


def test_every_numeric_key_has_a_documented_range():
    from pipeline.config import RANGES, numeric_keys

    keys = numeric_keys()
    assert "inference.slide_stride" in keys and "batch_size" in keys and "method.rcs.layers" in keys
    assert sorted(set(keys) - set(RANGES)) == [], "add the new key's valid range to pipeline.config.RANGES"
    assert sorted(set(RANGES) - set(keys)) == []


@pytest.mark.parametrize("override,message", [
    ("inference.slide_stride=0", "inference.slide_stride=0 is out of range: valid values are >= 1"),
    ("batch_size=0", "batch_size=0 is out of range: valid values are >= 1"),
    ("labels.min_confidence=1.5", r"labels.min_confidence=1.5 is out of range: valid values are \[0, 1\]"),
    ("inference.slide_crop=-5", "inference.slide_crop=-5 is out of range: valid values are >= 0"),
    ("method.rcs.lam=-0.1", r"method.rcs.lam=-0.1 is out of range"),
    ("method.rcs.layers=[3, -1]", "method.rcs.layers=-1 is out of range"),
    ("ray.cpus_per_actor=0", r"ray.cpus_per_actor=0.0 is out of range: valid values are > 0"),
    ("inference.slide_stride=300", "inference.slide_stride=300 is out of range: it must be at most inference.slide_crop=224"),
])
def test_out_of_range_values_name_key_value_and_range(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_boundary_values_are_accepted():
    cfg = load_config(overrides=["labels.min_confidence=1.0", "inference.slide_crop=0", "inference.slide_stride=1",
                                 "io.png_compression=9", "ray.shard_stall_timeout_s=0"])
    assert cfg.labels.min_confidence == 1.0 and cfg.inference.slide_crop == 0
