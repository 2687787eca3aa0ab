"""pipeline.io.tarfiles: write-then-read round trips, atomic writes, reproducible bytes, streaming reads."""
import gzip
import io
import tarfile

import pytest

from pipeline.io.tarfiles import iter_members, tar_member, write_tar

MEMBERS = [
    ("000001.jpg", b"\xff\xd8 not really a jpeg"),
    ("000001.json", b'{"a": 1}'),
    ("dir/000002.label.png", bytes(range(256)) * 40),  # spans several 512-byte blocks
    ("empty.txt", b""),
    ("long/" + "x" * 120 + ".png", b"a name ustar cannot hold"),
]


def test_members_round_trip_in_order(tmp_path):
    path = write_tar(tmp_path / "a.tar", MEMBERS)
    assert path == tmp_path / "a.tar"
    assert list(iter_members(path)) == MEMBERS
    assert list(iter_members(str(path))) == MEMBERS


def test_atomic_write_leaves_only_the_tar(tmp_path):
    write_tar(tmp_path / "a.tar", MEMBERS)
    write_tar(tmp_path / "a.tar", MEMBERS[:1])  # replaces the existing file
    assert [p.name for p in tmp_path.iterdir()] == ["a.tar"]
    assert list(iter_members(tmp_path / "a.tar")) == MEMBERS[:1]


def _failing_members():
    yield MEMBERS[0]
    raise RuntimeError("encoder failed")


def test_failed_atomic_write_leaves_no_partial_file(tmp_path):
    with pytest.raises(RuntimeError, match="encoder failed"):
        write_tar(tmp_path / "new.tar", _failing_members())
    assert list(tmp_path.iterdir()) == []


def test_failed_atomic_write_keeps_the_previous_file(tmp_path):
    path = write_tar(tmp_path / "a.tar", MEMBERS)
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        write_tar(path, _failing_members())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.tar"]


def test_non_atomic_write_goes_straight_to_the_path(tmp_path):
    write_tar(tmp_path / "a.tar", MEMBERS, atomic=False)
    assert list(iter_members(tmp_path / "a.tar")) == MEMBERS


def test_same_members_give_the_same_bytes(tmp_path):
    a = write_tar(tmp_path / "a.tar", MEMBERS).read_bytes()
    b = write_tar(tmp_path / "b.tar", MEMBERS, atomic=False).read_bytes()
    assert a == b
    with tarfile.open(tmp_path / "a.tar") as tar:
        infos = tar.getmembers()
    assert {(i.mtime, i.mode, i.uid, i.gid, i.uname, i.gname) for i in infos} == {(0, 0o644, 0, 0, "", "")}


def test_short_names_give_plain_ustar_bytes(tmp_path):
    """Shards written before this module used USTAR_FORMAT; their bytes must not change."""
    short = MEMBERS[:4]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in short:
            tar.addfile(*tar_member(name, data))
    assert write_tar(tmp_path / "a.tar", short).read_bytes() == buf.getvalue()


def test_read_false_yields_names_without_data(tmp_path):
    path = write_tar(tmp_path / "a.tar", MEMBERS)
    assert list(iter_members(path, read=False)) == [(name, None) for name, _ in MEMBERS]


def test_read_predicate_reads_only_chosen_members(tmp_path):
    path = write_tar(tmp_path / "a.tar", MEMBERS)
    got = list(iter_members(path, read=lambda name: name.endswith(".json")))
    assert got == [(name, data if name.endswith(".json") else None) for name, data in MEMBERS]


def test_file_objects_stream_compressed_tars_and_stay_open(tmp_path):
    raw = write_tar(tmp_path / "a.tar", MEMBERS).read_bytes()
    f = io.BytesIO(gzip.compress(raw))
    assert list(iter_members(f)) == MEMBERS
    assert not f.closed


def test_directories_and_links_are_not_members(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        folder = tarfile.TarInfo("dir")
        folder.type = tarfile.DIRTYPE
        link = tarfile.TarInfo("dir/link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "a.png"
        tar.addfile(folder)
        tar.addfile(link)
        tar.addfile(*tar_member("dir/a.png", b"png"))
    buf.seek(0)
    assert list(iter_members(buf)) == [("dir/a.png", b"png")]


def test_truncated_tar_raises_after_the_members_before_the_cut(tmp_path):
    raw = write_tar(tmp_path / "a.tar", MEMBERS).read_bytes()
    cut = io.BytesIO(raw[:5 * 512 + 100])  # inside the data of the third member
    got = []
    with pytest.raises((tarfile.TarError, OSError)):
        got.extend(iter_members(cut))
    assert got == MEMBERS[:2]


@pytest.mark.timeout(30)
def test_iter_members_skips_a_member_declaring_a_petabyte_in_bounded_time(tmp_path):
    import gzip
    import subprocess

    from tests.support import hostile_tar

    path = hostile_tar(tmp_path / "h.tar")
    gz = tmp_path / "h.tar.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    wanted = {"s0.png"}.__contains__
    for source in (path, gz):
        got = []
        with pytest.raises(tarfile.ReadError, match="end of data"):
            for name, data in iter_members(source, read=wanted):
                got.append((name, data))
        assert got == [("s0.png", b"png"), ("s1.bin", None)]
    proc = subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE)  # a stream that cannot seek
    with pytest.raises(tarfile.ReadError):
        list(iter_members(proc.stdout, read=wanted))
    proc.wait()
