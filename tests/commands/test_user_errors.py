"""Every user error of issue 21 through the command line: one line on stderr, exit 2 (130 for
Ctrl-C), never a traceback. In-process through `pipeline.cli.main` where possible (no Ray is
started: each error is found before), subprocesses only for signals and the console entry."""
import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.config import VocabularyConfig
from pipeline.vocabulary import load_vocabulary, read_vocabulary_file
from tests.support import REPO, default_sigint, env_without

TINY = REPO / "tests" / "fixtures" / "golden" / "tiny_clip_openai.pt"
CHEAP = ["--set", "model.pretrained=random", "--set", "vocabulary.templates=single"]  # no open_clip import


def one_line_error(capsys, rc, *needles, code=2):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == code, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def shards(tmp_path):
    """One real (tiny) tar shard in a folder."""
    folder = tmp_path / "shards"
    folder.mkdir()
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 30, 30)).save(buf, format="PNG")
    with tarfile.open(folder / "s-000000.tar", "w") as tar:
        info = tarfile.TarInfo("k0.png")
        info.size = len(buf.getvalue())
        tar.addfile(info, io.BytesIO(buf.getvalue()))
    return folder


def dry_run(shards, tmp_path, *extra):
    return main(["run", str(shards), "--out", str(tmp_path / "out"), "--dry-run", *CHEAP, *extra])


# -- vocabularies ---------------------------------------------------------------------------------

def test_latin1_vocabulary_names_file_and_line(shards, tmp_path, capsys):
    vocab = tmp_path / "v.txt"
    vocab.write_bytes("sky\ndog\ncaf\xe9\n".encode("latin-1"))
    line = one_line_error(capsys, dry_run(shards, tmp_path, "--set", f"vocabulary.file={vocab}"),
                          str(vocab), "line 3", "UTF-8")
    assert line.startswith("pseudolabel run: error:")


def test_yaml_entry_that_is_a_number_is_one_line(shards, tmp_path, capsys):
    vocab = tmp_path / "v.yaml"
    vocab.write_text("- cat\n- [dog, puppy]\n- 3\n")
    one_line_error(capsys, dry_run(shards, tmp_path, "--set", f"vocabulary.file={vocab}"), "line 3", "3")


def test_duplicate_class_and_shared_synonym_refused_with_line_numbers(shards, tmp_path, capsys):
    dup = tmp_path / "dup.txt"
    dup.write_text("sky\ndog\n\ncat\nDog\n")
    one_line_error(capsys, dry_run(shards, tmp_path, "--set", f"vocabulary.file={dup}"), "line 2", "line 5", "dog")
    syn = tmp_path / "syn.txt"
    syn.write_text("sky\ndog, puppy\ncat, puppy\n")
    one_line_error(capsys, dry_run(shards, tmp_path, "--set", f"vocabulary.file={syn}"),
                   "'puppy'", "line 2", "line 3")
    # A list that shares a word on purpose (the authors' coco_object) says so in the config.
    vocab = load_vocabulary(VocabularyConfig(file=str(syn), shared_synonyms=True))
    assert vocab.names == ["sky", "dog", "cat"]


def test_background_equal_to_a_class_is_refused(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("background\ncat\n")
    with pytest.raises(Exception, match="background"):
        load_vocabulary(VocabularyConfig(file=str(path), background="background"))


def test_bom_is_stripped_from_the_first_class(tmp_path):
    path = tmp_path / "v.txt"
    path.write_bytes(b"\xef\xbb\xbfsky, clouds\r\ntree\r\n")
    assert read_vocabulary_file(path).synonyms == (("sky", "clouds"), ("tree",))


def test_unknown_vocabulary_and_preset_list_the_known_names(shards, tmp_path, capsys):
    one_line_error(capsys, dry_run(shards, tmp_path, "--set", "vocabulary.file=ade20"), "ade20k", "voc21")
    one_line_error(capsys, dry_run(shards, tmp_path, "--config", "ade20"), "presets:", "ade20k", "voc21")


def test_dry_run_prints_the_parsed_classes(shards, tmp_path, capsys):
    vocab = tmp_path / "v.txt"
    vocab.write_text("sky, clouds\ntree\n")
    assert dry_run(shards, tmp_path, "--set", f"vocabulary.file={vocab}") == 0
    out = capsys.readouterr().out
    assert "classes (2): sky (clouds), tree" in out


# -- INPUT and weights, before Ray ----------------------------------------------------------------

def test_a_photo_as_input_is_refused_before_ray(tmp_path, capsys):
    photo = tmp_path / "coffee.jpg"
    Image.new("RGB", (8, 8)).save(photo)
    rc = main(["run", str(photo), "--out", str(tmp_path / "out"), *CHEAP, "--set", "vocabulary.file=voc21"])
    one_line_error(capsys, rc, "not a tar shard", "pseudolabel predict", "pseudolabel pack")
    assert not (tmp_path / "out").exists()


def test_folder_without_shards_says_pack_first(tmp_path):
    from pipeline.errors import UserError
    from pipeline.run.preflight import expand_local_hint

    (tmp_path / "notes.txt").write_text("x")
    hint = expand_local_hint(str(tmp_path), UserError("names no shards"))
    assert "pseudolabel pack" in str(hint) and "first" in str(hint)


def test_uncached_open_clip_tag_fails_in_preflight(shards, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    rc = main(["run", str(shards), "--out", str(tmp_path / "out"), "--dry-run", "--set", "vocabulary.file=voc21",
               "--set", "model.pretrained=openai", "--set", f"model.cache_dir={tmp_path / 'empty-cache'}"])
    one_line_error(capsys, rc, "not cached here", "model.pretrained=/path/to/")


def test_a_photo_folder_is_not_packed_before_the_weights_are_checked(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (16, 12)).save(photos / "IMG_0001.JPG")
    rc = main(["run", str(photos), "--out", str(tmp_path / "out"), "--set", "vocabulary.file=voc21",
               "--set", "model.pretrained=openai", "--set", f"model.cache_dir={tmp_path / 'empty-cache'}"])
    one_line_error(capsys, rc, "not cached here")
    assert not (tmp_path / "out").exists()  # nothing packed into OUTPUT/_input


# -- usage, conventions ---------------------------------------------------------------------------

def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", "--format", "nope"])
    one_line_error(capsys, exc.value.code, "pseudolabel export", "--help")


def test_verbose_after_the_subcommand(shards, tmp_path, capsys):
    from pipeline.cli import build_parser

    parser = build_parser(only="run")
    assert parser.parse_args(["run", "in", "--out", "o", "-v"]).verbose is True
    assert parser.parse_args(["-v", "run", "in", "--out", "o"]).verbose is True
    assert parser.parse_args(["run", "in", "--out", "o"]).verbose is False
    assert main(["run", str(shards), "--out", str(tmp_path / "o"), "--dry-run", "-v", *CHEAP,
                 "--set", "vocabulary.file=voc21"]) == 0


def test_version_and_env_for_bug_reports(tmp_path):
    version = subprocess.run([sys.executable, "-m", "pipeline.cli", "--version"], capture_output=True, text=True,
                             cwd=REPO, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("pseudolabel ")
    assert main(["env", "--json", str(tmp_path / "env.json")]) == 0
    import json

    facts = json.loads((tmp_path / "env.json").read_text())
    assert {"torch", "open_clip", "ray", "pyarrow"} <= set(facts["packages"]) and facts["devices"]


def test_old_spellings_still_work_with_a_deprecation_line(shards, tmp_path, capsys, caplog):
    # A WARNING log line on stderr (here captured by pytest's log handler), never an error line.
    assert main(["run", str(shards), str(tmp_path / "o"), "--dry-run", *CHEAP, "--set", "vocabulary.file=voc21"]) == 0
    assert "positional destination" in caplog.text and f"use --out {tmp_path / 'o'}" in caplog.text
    assert "error" not in capsys.readouterr().err
    caplog.clear()
    assert main(["run", str(shards), str(tmp_path / "o"), "--dry-run", "--json", *CHEAP,
                 "--set", "vocabulary.file=voc21"]) == 0
    assert '"fingerprint"' in capsys.readouterr().out and "--json -" in caplog.text


# -- Ctrl-C ---------------------------------------------------------------------------------------

def interrupt(args, after_s=3.0, timeout=180):
    """Start `pseudolabel ARGS`, send SIGINT once it is blocked, return (rc, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=env_without("RAY_ADDRESS"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    time.sleep(after_s)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def fifo(path):
    os.mkfifo(path)  # opening it for reading blocks until a writer comes: the command waits there
    return path


@pytest.mark.timeout(300)
def test_ctrl_c_in_predict_is_one_line_exit_130(tmp_path):
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 24)).save(image)
    weights = fifo(tmp_path / "weights.pt")
    rc, err = interrupt(["predict", str(image), "--out", str(tmp_path / "o"), "--set", f"model.pretrained={weights}",
                         "--set", "vocabulary.file=voc21"])
    assert rc == 130 and "Traceback" not in err, err
    assert [line for line in err.splitlines() if line.strip()] == ["pseudolabel predict: interrupted"]


@pytest.fixture
def fake_output(tmp_path):
    from tests.output_fixture import synthetic_sample, write_output_dir

    rng = np.random.default_rng(0)
    shards = {f"s{i:03d}": [synthetic_sample(rng, f"k{i}_{j}", (32, 32), 4) for j in range(3)] for i in range(2)}
    return write_output_dir(tmp_path / "labels", shards, ["background", "a", "b", "c"], input_dir=tmp_path / "in")


@pytest.mark.timeout(300)
def test_ctrl_c_in_train_says_resume(fake_output, tmp_path):
    student = tmp_path / "student"
    student.mkdir()
    fifo(student / "checkpoint.pt")  # --resume reads it first
    rc, err = interrupt(["train", str(fake_output.root), "--out", str(student), "--resume", "--no-progress",
                         "--set", "optim.steps=2"], after_s=8.0)
    lines = [line for line in err.splitlines() if line.strip() and "INFO" not in line]
    assert rc == 130 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("pseudolabel train: interrupted") and "--resume" in lines[0], err


@pytest.mark.timeout(300)
def test_ctrl_c_in_verify_deep_is_one_line(fake_output, tmp_path):
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    for name in ("s000", "s001"):
        fifo(blocked / f"{name}.tar")  # the deep check re-reads each input shard: it waits here
    rc, err = interrupt(["verify", str(fake_output.root), str(blocked), "--deep", "--workers", "2"], after_s=5.0)
    assert rc == 130 and "Traceback" not in err, err
    assert [line for line in err.splitlines() if "interrupted" in line] == ["pseudolabel verify: interrupted"]


# -- predict --------------------------------------------------------------------------------------

def test_predict_refuses_two_inputs_with_one_stem_naming_both(tmp_path, capsys):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / sub / "IMG_1.png")
    rc = main(["predict", str(tmp_path / "a" / "IMG_1.png"), str(tmp_path / "b" / "IMG_1.png"),
               "--out", str(tmp_path / "o"), *CHEAP, "--set", "vocabulary.file=voc21"])
    one_line_error(capsys, rc, str(tmp_path / "a" / "IMG_1.png"), str(tmp_path / "b" / "IMG_1.png"), "--out")


def test_predict_takes_the_images_of_a_folder(tmp_path):
    from pipeline.commands.predict import expand_folders

    (tmp_path / "p").mkdir()
    for name in ("b.JPG", "a.png", "notes.txt", ".hidden.png"):
        (tmp_path / "p" / name).write_bytes(b"x")
    assert [p.name for p in expand_folders([tmp_path / "p"], ["jpg", "png"])] == ["a.png", "b.JPG"]


def test_student_arrays_are_stored_like_the_clip_path():
    from pipeline.commands.predict import compact_confidence, compact_pred

    pred = np.array([[0, 3], [20, 1]], dtype=np.int64)
    conf = np.array([[0.0, 0.5], [1.0, 0.2]], dtype=np.float32)
    assert compact_pred(pred, 21).dtype == np.uint8 and compact_pred(pred, 300).dtype == np.uint16
    assert compact_confidence(conf).tolist() == [[0, 128], [255, 51]] and compact_confidence(conf).dtype == np.uint8


def test_overlay_has_a_legend_of_the_classes_present():
    from pipeline.overlay import blend, with_legend

    pred = np.zeros((40, 60), np.uint8)
    pred[:, 30:] = 2
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    out = with_legend(blend(np.zeros((40, 60, 3), np.uint8), pred, colors), pred, ["sky", "tree", "price $\\foo$"],
                      colors)
    assert out.shape[0] > 40 and out.shape[1] == 60
    band = out[40:].reshape(-1, 3)
    assert (band == (0, 0, 255)).all(axis=1).any() and not (band == (0, 255, 0)).all(axis=1).any()


# -- spellings ------------------------------------------------------------------------------------

def test_verify_explain_needs_no_output_and_verify_without_output_is_one_line(capsys):
    assert main(["verify", "--explain"]) == 0
    capsys.readouterr()
    one_line_error(capsys, main(["verify"]), "no OUTPUT")


def test_train_preset_is_spelled_config_and_the_old_flag_warns(fake_output, tmp_path, capsys, caplog):
    rc = main(["train", str(fake_output.root), "--out", str(tmp_path / "s"), "--config", "nope"])
    one_line_error(capsys, rc, "nope", "cpu", "gpu")
    rc = main(["train", str(fake_output.root), "--out", str(tmp_path / "s"), "--preset", "nope"])
    one_line_error(capsys, rc, "nope")
    assert "--preset nope is deprecated, use --config nope" in caplog.text


def test_ray_notices_are_silenced_unless_verbose():
    import logging

    from pipeline.commands.run import quiet_ray
    from ray._private.ray_logging import _warn_once

    quiet_ray()
    assert not logging.getLogger("ray._private.authentication.authentication_token_setup").isEnabledFor(logging.WARNING)
    assert _warn_once() == ""


@pytest.mark.timeout(400)
@pytest.mark.parametrize("command", ["export", "report", "eval", "bench"])
def test_ctrl_c_in_every_command_is_one_line_exit_130(command, fake_output, tmp_path):
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    for name in ("s000", "s001"):
        fifo(blocked / f"{name}.tar")  # input shards that block the reader until the signal comes
    args = {
        "export": ["export", str(fake_output.root), "--out", str(tmp_path / "dest"), "--format", "voc",
                   "--images-root", str(blocked)],
        "report": ["report", str(fake_output.root), "--images-root", str(blocked)],
        "eval": ["eval", str(fake_output.root), "--gt", str(blocked / "s000.tar")],
        "bench": ["bench", "--config", str(fifo(tmp_path / "bench.yaml"))],
    }[command]
    rc, err = interrupt(args, after_s=6.0)
    assert rc == 130 and "Traceback" not in err, err
    assert [line for line in err.splitlines() if line.startswith("pseudolabel")] == [f"pseudolabel {command}: interrupted"]


def test_json_dash_prints_json_on_stdout(fake_output, tmp_path, capsys):
    import json

    rc = main(["verify", str(fake_output.root), "--json", "-"])
    doc = json.loads(capsys.readouterr().out)
    assert rc in (0, 1) and "passed" in json.dumps(doc)
    rc = main(["progress", str(fake_output.root), "--json", "-"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["done_shards"] == 2


def test_read_only_commands_end_without_the_teardown_that_aborted(fake_output):
    """`progress` read by Arrow sometimes aborted at interpreter exit (rc 134, "terminate called
    without an active exception"): read-only commands end the process as soon as they are done,
    output flushed, no teardown (atexit handlers do not run; the printed snapshot is complete)."""
    probe = ("import atexit, sys; atexit.register(lambda: print('TEARDOWN', flush=True)); "
             f"sys.argv = ['pseudolabel', 'progress', {str(fake_output.root)!r}]; "
             "from pipeline.cli import main; sys.exit(main())")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("shards done: 2") and "TEARDOWN" not in proc.stdout
    script = subprocess.run([sys.executable, str(REPO / "jobs" / "progress.py"), str(fake_output.root), "--json"],
                            capture_output=True, text=True, timeout=120)
    assert script.returncode == 0 and '"done_shards": 2' in script.stdout  # the old script's --json flag
