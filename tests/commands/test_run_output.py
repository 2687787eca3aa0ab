"""What `pseudolabel run` prints for a person: the summary table, the exit-1 line, the progress bar.
Unit tests of the command layer (no Ray)."""
import io
import tarfile
from types import SimpleNamespace

from rich.console import Console

from pipeline.commands import run as run_command
from pipeline.run.summary import RunSummary


def summary_with_classes():
    shares = {f"class{i}": 0.0 for i in range(150)}
    shares.update({"wall": 0.6, "floor": 0.3, "[bold]sky[/bold]": 0.0995, "tiny": 0.0005})
    return RunSummary(input="in", output="out", shards_total=3, shards_pending=3, shards_labeled=3, images_ok=15,
                      images_failed=3, class_pixel_share=shares)


def test_summary_lists_classes_that_occur_and_counts_the_rest(monkeypatch):
    buffer = io.StringIO()
    monkeypatch.setattr("rich.console.Console", lambda *a, **k: Console(file=buffer, width=200))
    run_command.print_summary(summary_with_classes())
    text = buffer.getvalue()
    listed = [line for line in text.splitlines() if "dataset, class " in line]
    assert len(listed) == 3, text  # wall, floor, sky; not the 150 at 0% nor the one under 0.1%
    assert "[bold]sky[/bold]" in text  # a class name is text, not rich markup
    assert "151 more classes" in text and "150 never seen, 1 under 0.1%" in text


def test_failure_line_names_the_flag_and_the_counts():
    line = run_command.failure_line(summary_with_classes(), None)
    assert "3 of 18 images failed" in line and "--max-failure-rate" in line and "1%" in line
    assert "above --max-failure-rate 0.05" in run_command.failure_line(summary_with_classes(), 0.05)


def test_images_bar_has_a_total_from_the_start(tmp_path):
    shard = tmp_path / "s-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for key in ("a", "b", "c"):
            for ext in ("jpg", "json"):
                info = tarfile.TarInfo(f"{key}.{ext}")
                tar.addfile(info, io.BytesIO(b""))
    assert run_command.samples_in_first_local_shard(str(tmp_path)) == 3
    assert run_command.samples_in_first_local_shard("s3://bucket/x.tar") is None
    bar = run_command.RichProgress()
    bar.bar.console.quiet = True
    bar.per_shard_guess = 3
    bar.start(total_shards=4, skipped=0)
    try:
        assert bar.bar.tasks[bar.images].total == 12  # 4 shards x 3 images, before any image is labeled
        bar.shard_finished(SimpleNamespace(samples=5))  # refined by what finished shards held
        bar.update(samples=5, ok=5, errors=0)
        assert bar.bar.tasks[bar.images].total == 5 + 5 * 3
    finally:
        bar.close()


def test_a_rerun_with_nothing_to_label_says_earlier_failures_exist(monkeypatch, capsys):
    import argparse

    from pipeline.config import load_config

    done = RunSummary(input="in", output="out", shards_total=3, shards_skipped=3, dataset_images_ok=15,
                      dataset_images_failed=3)
    monkeypatch.setattr("pipeline.run.runner.run_pipeline", lambda *a, **k: done)
    args = argparse.Namespace(input="in", output="out", no_progress=True, overwrite=False, ray_address=None,
                              break_lock=False, lock_stale_after=None, allow_pipe=False, repair=False,
                              json_summary="-", max_failure_rate=None)
    assert run_command._run(args, load_config()) == 0
    err = capsys.readouterr().err
    assert "3 of 18 images of OUTPUT failed in earlier runs" in err
