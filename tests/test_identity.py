"""The content fingerprint: what changes labels by content, paths recorded but not compared."""
import os

import pytest

from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.identity import FINGERPRINT_PREFIX, Identity, checkpoint_sha256, mismatch_message, resolve_identity


@pytest.fixture
def files(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("sky\ntree, bush\nroad\n")
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"weights-A" * 1000)
    return tmp_path, vocab, ckpt


def cfg_for(vocab, ckpt, *extra):
    return load_config(overrides=[f"vocabulary.file={vocab}", f"model.pretrained={ckpt}",
                                  "vocabulary.templates=single", *extra])


def test_same_weights_under_another_path_spelling_are_the_same_identity(files, monkeypatch):
    root, vocab, ckpt = files
    monkeypatch.chdir(root)
    a = resolve_identity(cfg_for(vocab, ckpt))
    b = resolve_identity(cfg_for("vocab.txt", "./w.pt"))
    assert a.fingerprint == b.fingerprint and a.fingerprint.startswith(FINGERPRINT_PREFIX)
    assert a.values["model.weights"].startswith("sha256:")
    assert a.sources["model.pretrained"] == str(ckpt.resolve())  # recorded, not compared


def test_replaced_checkpoint_at_the_same_path_differs(files):
    _, vocab, ckpt = files
    before = resolve_identity(cfg_for(vocab, ckpt))
    ckpt.write_bytes(b"weights-B" * 1000)
    os.utime(ckpt, ns=(1, 1))  # another mtime: the cache by (path, size, mtime) must not hide it
    after = resolve_identity(cfg_for(vocab, ckpt))
    assert [d.key for d in after.differences(before)] == ["model.weights"]


def test_vocabulary_edits_in_place_change_the_identity(files):
    _, vocab, ckpt = files
    base = resolve_identity(cfg_for(vocab, ckpt))
    vocab.write_text("tree, bush\nsky\nroad\n")  # two lines swapped
    swapped = resolve_identity(cfg_for(vocab, ckpt))
    vocab.write_text("sky\ntree, bush\nroad\ncar\n")  # a class appended
    appended = resolve_identity(cfg_for(vocab, ckpt))
    vocab.write_text("sky\ntree\nroad\n")  # a synonym dropped
    synonym = resolve_identity(cfg_for(vocab, ckpt))
    for other in (swapped, appended, synonym):
        assert [d.key for d in other.differences(base)] == ["vocabulary"]
    with_bg = resolve_identity(cfg_for(vocab, ckpt, "vocabulary.background=background"))
    assert with_bg.values["vocabulary"][0] == ["background"]


def test_template_text_and_label_settings_count_but_speed_settings_do_not(files, tmp_path):
    _, vocab, ckpt = files
    base = resolve_identity(cfg_for(vocab, ckpt))
    tpl = tmp_path / "t.txt"
    tpl.write_text("a photo of a {}.\n")
    by_file = resolve_identity(cfg_for(vocab, ckpt, f"vocabulary.templates={tpl}"))
    assert by_file.fingerprint == base.fingerprint  # same text as `single`, from a file
    tpl.write_text("a drawing of a {}.\n")
    assert [d.key for d in resolve_identity(cfg_for(vocab, ckpt, f"vocabulary.templates={tpl}")).differences(base)] \
        == ["vocabulary.templates"]
    fast = resolve_identity(cfg_for(vocab, ckpt, "batch_size=32", "inference.max_crops_per_forward=4",
                                    "inference.compile=true", "ray.cpu_actors=7", "device=cpu"))
    assert fast.fingerprint == base.fingerprint
    for override, key in [("io.image_extensions=[png]", "io.image_extensions"), ("precision=bfloat16", "precision"),
                          ("method.sfr.tau=1.0", "method.sfr.tau"), ("labels.min_confidence=0.3", "labels.min_confidence"),
                          ("inference.slide_stride=100", "inference.slide_stride")]:
        assert [d.key for d in resolve_identity(cfg_for(vocab, ckpt, override)).differences(base)] == [key]


def test_tags_hash_the_tag_and_the_architecture(files):
    _, vocab, _ = files
    openai = resolve_identity(cfg_for(vocab, "openai"))
    assert openai.values["model.weights"] == "tag:openai:ViT-B-16"
    assert resolve_identity(cfg_for(vocab, "random")).values["model.weights"] == "tag:random:ViT-B-16"
    other = resolve_identity(cfg_for(vocab, "openai", "model.name=ViT-L-14"))
    assert {d.key for d in other.differences(openai)} == {"model.weights", "model.name"}


def test_missing_checkpoint_is_a_user_error_naming_the_path(files):
    root, vocab, _ = files
    with pytest.raises(UserError, match=f"checkpoint {root / 'nope.pt'} does not exist"):
        resolve_identity(cfg_for(vocab, root / "nope.pt"))


def test_refusal_names_every_differing_key_with_both_values(files):
    _, vocab, ckpt = files
    base = resolve_identity(cfg_for(vocab, ckpt))
    vocab.write_text("tree, bush\nsky\nroad\n")
    other = resolve_identity(cfg_for(vocab, ckpt, "method.sfr.tau=1.0", "inference.prob_thd=0.2"))
    diffs = other.differences(base)
    assert [d.key for d in diffs] == ["inference.prob_thd", "method.sfr.tau", "vocabulary"]
    line = mismatch_message(diffs, "OUTPUT o", "OUTPUT has", "this run has", "use --overwrite")
    assert "\n" not in line
    assert "method.sfr.tau: OUTPUT has 2.1, this run has 1.0" in line
    assert "inference.prob_thd: OUTPUT has 0.0, this run has 0.2" in line
    assert '[["sky"], ["tree", "bush"], ["road"]]' in line and '[["tree", "bush"], ["sky"], ["road"]]' in line


def test_identity_round_trips_through_json(files):
    import json

    _, vocab, ckpt = files
    a = resolve_identity(cfg_for(vocab, ckpt))
    b = Identity.from_dict(json.loads(json.dumps(a.to_dict())))
    assert b.fingerprint == a.fingerprint and not a.differences(b)


def test_checkpoint_is_hashed_once_per_file_version(files, monkeypatch):
    import builtins

    _, _, ckpt = files
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: (opened.append(str(p)), real_open(p, *a, **k))[1])
    first = checkpoint_sha256(ckpt.parent / "." / ckpt.name)
    assert checkpoint_sha256(ckpt) == first
    assert opened.count(str(ckpt.resolve())) <= 1
