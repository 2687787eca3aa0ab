import pytest

from pipeline.errors import UserError
from pipeline.io.shards import expand_input, shard_name


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_brace_directory_glob_and_list(tmp_path):
    for i in range(3):
        touch(tmp_path / "d" / f"train-{i:06d}.tar")
    touch(tmp_path / "d" / "notes.md")
    brace = expand_input(str(tmp_path / "d" / "train-{000000..000002}.tar"))
    assert [s.name for s in brace] == ["train-000000", "train-000001", "train-000002"]
    assert [s.url for s in expand_input(str(tmp_path / "d"))] == [s.url for s in brace]
    assert [s.name for s in expand_input(str(tmp_path / "d" / "train-00000[12].tar"))] == ["train-000001",
                                                                                         "train-000002"]
    listing = tmp_path / "d" / "shards.txt"
    listing.write_text("# comment\ntrain-000002.tar\n\n/abs/other-{01..02}.tar\n")
    assert [s.url for s in expand_input(str(listing))] == [str(tmp_path / "d" / "train-000002.tar"),
                                                          "/abs/other-01.tar", "/abs/other-02.tar"]


def test_urls_are_passed_through_and_named():
    assert shard_name("s3://bucket/a/train-000001.tar") == "train-000001"
    assert shard_name("https://host/x/shard-7.tar?sig=abc") == "shard-7"
    assert shard_name("pipe:curl -s https://host/x/part-9.tar.gz") == "part-9"
    specs = expand_input("pipe:aws s3 cp s3://b/p-{0..1}.tar -", allow_pipe=True)
    assert [s.name for s in specs] == ["p-0", "p-1"]
    assert expand_input("https://host/data/a.tar")[0].url == "https://host/data/a.tar"


def test_name_collision_and_empty_input(tmp_path):
    with pytest.raises(UserError, match="share the name"):
        expand_input("/a/{x,y}/shard.tar")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="names no shards"):
        expand_input(str(tmp_path / "empty"))
