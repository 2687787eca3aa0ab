import pytest

from pipeline.config import VocabularyConfig
from pipeline.errors import UserError
from pipeline.vocabulary import load_templates, load_vocabulary, palette, read_vocabulary_file


def test_text_file_with_synonyms(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("sky, clouds\ntree\n\nperson, man, woman\n")
    vocab = read_vocabulary_file(path)
    assert vocab.names == ["sky", "tree", "person"]
    assert vocab.queries == ["sky", "clouds", "tree", "person", "man", "woman"]
    assert vocab.query_class == [0, 0, 1, 2, 2, 2]


def test_yaml_list_and_background(tmp_path):
    path = tmp_path / "v.yaml"
    path.write_text("- cat\n- [dog, puppy]\n")
    vocab = load_vocabulary(VocabularyConfig(file=str(path), background="background, floor"))
    assert vocab.names == ["background", "cat", "dog"]
    assert vocab.synonyms[0] == ("background", "floor")


def test_missing_or_empty_vocabulary_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no vocabulary"):
        load_vocabulary(VocabularyConfig())
    with pytest.raises(UserError, match="not found"):
        read_vocabulary_file(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(UserError, match="no classes"):
        read_vocabulary_file(tmp_path / "empty.txt")


def test_templates_and_palette(tmp_path):
    assert len(load_templates("openai_imagenet")) == 80
    (tmp_path / "t.txt").write_text("a photo of {}.\nan image of {}\n")
    assert [t("cat") for t in load_templates(str(tmp_path / "t.txt"))] == ["a photo of cat.", "an image of cat"]
    colors = palette(200)
    assert len(set(colors)) == 200
