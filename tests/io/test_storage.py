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
