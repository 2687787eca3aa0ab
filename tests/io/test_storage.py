import os

import pytest

from pipeline.io.storage import Storage


def test_atomic_write_and_listing(tmp_path):
    st = Storage(str(tmp_path / "out"))
    st.write_bytes("a/b.json", b"{}")
    assert st.read_bytes("a/b.json") == b"{}" and st.exists("a/b.json")
    assert st.listdir("a") == ["b.json"] and st.listdir("nothing") == []
    assert os.listdir(tmp_path / "out" / "_tmp") == []  # the temporary was renamed away


def test_failed_write_leaves_nothing(tmp_path):
    st = Storage(str(tmp_path))
    with pytest.raises(RuntimeError):
        with st.atomic_path("x/y.bin") as tmp:
            with open(tmp, "wb") as f:
                f.write(b"partial")
            raise RuntimeError("writer crashed")
    assert not st.exists("x/y.bin") and os.listdir(tmp_path / "_tmp") == []


def test_object_store_write_is_one_put(monkeypatch):
    # memory:// is an fsspec object-store stand-in: not local, so the put path is taken.
    st = Storage("memory://bucket/out")
    assert not st.is_local
    puts = []
    original = st.fs.put_file
    monkeypatch.setattr(st.fs, "put_file", lambda src, dst, **kw: (puts.append(dst), original(src, dst, **kw)))
    st.write_bytes("manifest/a.parquet", b"data")
    assert puts == ["/bucket/out/manifest/a.parquet"]
    assert st.read_bytes("manifest/a.parquet") == b"data"


@pytest.mark.timeout(60)
def test_pipe_exit_status_is_checked_and_stderr_cannot_block(tmp_path):
    from pipeline.errors import TransientReadError
    from pipeline.io.storage import open_input

    # 1 MB on stderr would fill a stderr pipe nobody reads and hang the command for ever
    chatty = "head -c 1000000 /dev/zero >&2; printf hello"
    with open_input(f"pipe:{chatty}") as f:
        assert f.read() == b"hello"
    with pytest.raises(TransientReadError, match=r"status 7: boom"):
        with open_input("pipe:printf data; echo boom >&2; exit 7") as f:
            assert f.read() == b"data"
    # a reader that gave up on the bytes (a parse error) still learns that the command failed
    with pytest.raises(TransientReadError, match="status 2") as info:
        with open_input("pipe:printf abc; exit 2") as f:
            f.read()
            raise ValueError("not a tar")
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(ValueError):  # ... and a command that succeeded leaves the parse error as it was
        with open_input("pipe:printf abc") as f:
            f.read()
            raise ValueError("not a tar")
