import gzip

import pytest

from pipeline.io.reader import ReadReport, iter_samples, split_member_name
from pipeline.io.tarfiles import write_tar

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
    _, report = read(f"pipe:cat {plain}; exit 3")
    assert report.failure is not None and "status 3" in report.failure


def test_split_member_name():
    assert split_member_name("a/b/key.seg.png") == ("a/b/key", "seg.png")
    assert split_member_name("key") == (None, "")
    assert split_member_name("._key.jpg") == (None, "")
