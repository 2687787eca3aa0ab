import gzip
import io
import tarfile
import time

import pytest

from pipeline.errors import TransientReadError
from pipeline.io.reader import ReadReport, iter_samples, split_member_name, unsafe_key
from pipeline.io.tarfiles import write_tar
from tests.support import hostile_tar

EXTS = ["jpg", "jpeg", "png", "webp"]


def read(path, exts=EXTS):
    report = ReadReport()
    samples = list(iter_samples(str(path), exts, report))
    return samples, report


def members(n, start=0):
    out = []
    for i in range(start, start + n):
        out += [(f"s{i:03d}.json", b"{}"), (f"s{i:03d}.png", bytes([i]) * 1000)]
    return out


def test_groups_members_into_samples_in_order(tmp_path):
    path = tmp_path / "a.tar"
    write_tar(path, members(3) + [("s009.txt", b"caption only"), ("dir/x.y.JPG", b"j"), ("dir/x.y.png", b"p")])
    samples, report = read(path)
    assert [s.key for s in samples] == ["s000", "s001", "s002", "s009", "dir/x"]
    assert [s.sample_index for s in samples] == [0, 1, 2, 3, 4]
    assert samples[1].data == bytes([1]) * 1000 and samples[1].image_member == "png"
    assert samples[3].error.kind == "no_image" and samples[3].image_member is None
    # ".y.JPG" is not "jpg": extensions match whole (WebDataset semantics); so x has no image either
    assert samples[4].error.kind == "no_image"
    assert report.failure is None and report.samples == 5


def test_extension_preference_follows_config_order(tmp_path):
    path = tmp_path / "a.tar"
    write_tar(path, [("k.png", b"png"), ("k.jpg", b"jpg")])
    (sample,), _ = read(path, ["jpg", "png"])
    assert sample.image_member == "jpg" and sample.data == b"jpg"
    (sample,), _ = read(path, ["png", "jpg"])
    assert sample.data == b"png"


def test_duplicate_key_is_an_error_row(tmp_path):
    path = tmp_path / "a.tar"
    write_tar(path, members(2) + members(1))
    samples, _ = read(path)
    assert [s.key for s in samples] == ["s000", "s001", "s000"]
    assert samples[0].ok and samples[2].error.kind == "duplicate_key"


@pytest.mark.parametrize("cut_in", ["header", "data", "boundary"])
def test_truncated_tar_keeps_earlier_samples(tmp_path, cut_in):
    full = tmp_path / "full.tar"
    write_tar(full, members(4))
    data = full.read_bytes()
    json_member, png_member = 512 + 512, 512 + 1024  # header + data padded to 512-byte blocks
    start_of_s002_png = 2 * (json_member + png_member) + json_member  # two samples, then s002.json
    cut = {"header": start_of_s002_png + 100, "data": start_of_s002_png + 512 + 300,
           "boundary": start_of_s002_png}[cut_in]
    path = tmp_path / "cut.tar"
    path.write_bytes(data[:cut])
    samples, report = read(path)
    assert report.failure is not None and not report.unreadable
    assert [s.key for s in samples[:2]] == ["s000", "s001"] and all(s.ok for s in samples[:2])
    # the sample being read when the data ended is a row too, marked as cut off
    assert [s.key for s in samples[2:]] == ["s002"]
    assert samples[2].error.kind == "truncated_tar"


def test_tar_cut_after_a_whole_sample_is_still_detected(tmp_path):
    full = tmp_path / "full.tar"
    write_tar(full, members(2))
    path = tmp_path / "cut.tar"
    path.write_bytes(full.read_bytes()[: 2 * (512 + 512 + 512 + 1024)])  # both samples whole, no end blocks
    samples, report = read(path)
    assert report.failure is not None and "end-of-archive" in report.failure
    assert [s.key for s in samples] == ["s000", "s001"] and all(s.ok for s in samples)


def test_unreadable_inputs(tmp_path):
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"\x07" * 5000)
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    for path in (garbage, empty, tmp_path / "missing.tar"):
        samples, report = read(path)
        assert samples == [] and report.unreadable, path


def test_empty_valid_tar_is_fine(tmp_path):
    path = tmp_path / "e.tar"
    write_tar(path, [])
    samples, report = read(path)
    assert samples == [] and report.failure is None


def test_gzipped_and_piped_shards(tmp_path):
    plain = tmp_path / "p.tar"
    write_tar(plain, members(3))
    gz = tmp_path / "p.tar.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    for url in (str(gz), f"pipe:cat {plain}", f"file://{plain}"):
        samples, report = read(url)
        assert [s.key for s in samples] == ["s000", "s001", "s002"] and report.failure is None, url
    truncated_gz = tmp_path / "t.tar.gz"
    truncated_gz.write_bytes(gz.read_bytes()[:-20])
    _, report = read(truncated_gz)
    assert report.failure is not None
    # a command that fails after its whole output is a transport failure, not a truncated tar
    with pytest.raises(TransientReadError, match="status 3"):
        read(f"pipe:cat {plain}; exit 3")


def test_split_member_name():
    assert split_member_name("a/b/key.seg.png") == ("a/b/key", "seg.png")
    assert split_member_name("key") == (None, "")
    assert split_member_name("._key.jpg") == (None, "")


def special_tar(path, entries):
    """A tar of `(name, kind, data)`: kind is a tarfile type (REGTYPE, SYMTYPE, ...)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = "a.png"
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return path


def test_image_member_keeps_the_case_of_its_extension(tmp_path):
    path = tmp_path / "a.tar"
    write_tar(path, [("a.JPG", b"1"), ("b.Jpeg", b"2"), ("c.PNG", b"3"), ("d.json", b"{}"), ("d.png", b"4")])
    samples, report = read(path, ["jpg", "JPEG", ".png"])  # config spellings are normalised too
    assert [(s.key, s.image_member, s.data) for s in samples] == [
        ("a", "JPG", b"1"), ("b", "Jpeg", b"2"), ("c", "PNG", b"3"), ("d", "png", b"4")]
    # KEY.image_member is the member's name in the input tar: what the loader and report look up
    from pipeline.io.tarfiles import iter_members
    names = {n for n, _ in iter_members(path, read=False)}
    assert all(f"{s.key}.{s.image_member}" in names for s in samples)


def test_every_member_is_a_sample_member_or_counted(tmp_path):
    R, entries = tarfile.REGTYPE, []
    entries += [("a.png", R, b"a"), ("a.json", R, b"{}"), ("link.png", tarfile.SYMTYPE, b""),
                ("hard.png", tarfile.LNKTYPE, b""), ("dev.png", tarfile.CHRTYPE, b""),
                ("blk.png", tarfile.BLKTYPE, b""), ("fifo.png", tarfile.FIFOTYPE, b""),
                ("x.jpg", tarfile.DIRTYPE, b""), ("sub", tarfile.DIRTYPE, b""), ("README", R, b"text"),
                ("sub/.hidden.png", R, b"h"), ("._b.png", R, b"mac"), ("b.png", R, b"b")]
    samples, report = read(special_tar(tmp_path / "s.tar", entries))
    assert [(s.key, s.ok) for s in samples] == [("a", True), ("b", True)]
    assert report.skipped == {"symlink": 1, "hardlink": 1, "device": 2, "fifo": 1, "directory": 2,
                              "no_extension": 1, "hidden": 2}
    assert report.members == len(entries) and report.failure is None
    assert report.members - sum(report.skipped.values()) == 3  # a.png, a.json, b.png: in sample rows


def test_second_member_of_one_key_and_extension_is_a_duplicate_row(tmp_path):
    path = tmp_path / "a.tar"
    write_tar(path, [("c.jpg", b"first"), ("c.json", b"{}"), ("c.jpg", b"second"), ("d.png", b"d"),
                     ("c.JPG", b"third")])
    samples, report = read(path)
    assert [(s.key, s.ok) for s in samples] == [("c", True), ("c", False), ("d", True), ("c", False)]
    assert samples[0].data == b"first"
    assert samples[1].error.kind == samples[3].error.kind == "duplicate_key" and samples[1].data is None
    assert report.samples == 4 and report.members == 5


def test_unsafe_keys_are_error_rows(tmp_path):
    path = tmp_path / "a.tar"
    names = ["../../evil.jpg", "/abs/x.jpg", "a/../b.jpg", "ok/a..b.jpg", "a..b/c.jpg", "./fine.jpg"]
    write_tar(path, [(n, b"x") for n in names])
    samples, _ = read(path)
    kinds = {s.key: (s.error.kind if s.error else "ok") for s in samples}
    assert kinds == {"../../evil": "unsafe_key", "/abs/x": "unsafe_key", "a/../b": "unsafe_key",
                     "ok/a": "no_image", "a..b/c": "ok", "./fine": "ok"}  # ok/a: extension ".b.jpg"
    assert all(s.data is None for s in samples if not s.ok)  # never read
    assert unsafe_key("..\\x") and not unsafe_key("x..y")


def test_member_over_max_member_bytes_is_too_large_and_not_read(tmp_path):
    path = tmp_path / "a.tar"
    write_tar(path, [("a.png", b"a" * 100), ("big.jpg", b"b" * 5000), ("big.png", b"small"), ("c.png", b"c")])
    report = ReadReport()
    samples = list(iter_samples(str(path), EXTS, report, max_member_bytes=1000))
    assert [(s.key, s.ok) for s in samples] == [("a", True), ("big", False), ("c", True)]
    err = samples[1].error
    # the preferred member is too large: the sample is a row saying so (no silent fall-back to .png)
    assert err.kind == "too_large" and "5000 bytes" in err.message and "io.max_member_bytes=1000" in err.message
    assert samples[1].data is None and report.failure is None


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["file", "pipe", "gzip"])
def test_member_declaring_a_petabyte_is_skipped_in_bounded_time(tmp_path, how):
    path = hostile_tar(tmp_path / "h.tar")
    if how == "gzip":
        gz = tmp_path / "h.tar.gz"
        gz.write_bytes(gzip.compress(path.read_bytes()))
        url = str(gz)
    else:
        url = str(path) if how == "file" else f"pipe:cat {path}"
    t0 = time.monotonic()
    samples, report = read(url)
    assert [(s.key, s.ok) for s in samples] == [("s0", True), ("s1", False)]
    assert samples[1].error.kind == "truncated_tar" and "end of data" in report.failure
    print(f"{how}: skipped a member declaring 10^15 bytes in {time.monotonic() - t0:.3f}s")


@pytest.mark.timeout(30)
def test_verify_reads_the_keys_of_a_hostile_shard_in_bounded_time(tmp_path):
    from pipeline.run.verify import input_keys

    assert input_keys(str(hostile_tar(tmp_path / "h.tar"))) == ["s0", "s1"]


def test_hostile_header_cannot_make_the_reader_hold_its_size(tmp_path):
    # a PAX header whose own data (the key=value records) declares 2 MB, allowed 1 MB
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = 2 * 2**20
    path = tmp_path / "p.tar"
    path.write_bytes(info.tobuf(tarfile.USTAR_FORMAT) + b"9" * (2 * 2**20) + b"\0" * 1024)
    report = ReadReport()
    assert list(iter_samples(str(path), EXTS, report, max_member_bytes=2**20)) == []
    assert "io.max_member_bytes" in report.failure


class _Dropping(io.RawIOBase):
    """A network body that fails after `ok` bytes, as an HTTP payload error or a timeout would."""

    def __init__(self, data, ok):
        self.data, self.ok, self.pos = data, ok, 0

    def readable(self):
        return True

    def readinto(self, b):
        if self.pos >= self.ok:
            raise ConnectionResetError("connection reset by peer")
        n = min(len(b), self.ok - self.pos)
        b[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


@pytest.mark.parametrize("where", ["header", "member"])
def test_transport_failure_raises_transient_not_truncated(tmp_path, monkeypatch, where):
    import contextlib

    import pipeline.io.reader as reader

    path = tmp_path / "a.tar"
    write_tar(path, members(4))
    data = path.read_bytes()
    ok = 2 * (1024 + 1536) + (0 if where == "header" else 1024 + 512 + 100)
    monkeypatch.setattr(reader, "open_input", lambda url, opts=None: contextlib.nullcontext(_Dropping(data, ok)))
    report, got = ReadReport(), []
    with pytest.raises(TransientReadError, match="ConnectionResetError"):
        for s in iter_samples("https://example.invalid/a.tar", EXTS, report):
            got.append(s.key)
    # samples before the break were yielded (the stage drops them: nothing of the shard is kept);
    # the one being read is no row and the tar is not called truncated
    assert got == (["s000"] if where == "header" else ["s000", "s001"]) and report.failure is None


@pytest.mark.timeout(60)
def test_pipe_that_dies_mid_member_is_transient_and_a_clean_cut_is_truncated(tmp_path):
    path = tmp_path / "a.tar"
    write_tar(path, members(4))
    cut = 2 * (1024 + 1536) + 1024 + 512 + 100
    with pytest.raises(TransientReadError, match="status 1"):
        read(f"pipe:head -c {cut} {path}; exit 1")
    # the same bytes from a command that succeeded: the data really ends there
    samples, report = read(f"pipe:head -c {cut} {path}")
    assert [s.key for s in samples] == ["s000", "s001", "s002"] and samples[2].error.kind == "truncated_tar"
    assert report.failure is not None
