"""Hardening: jaxnets never deletes or overwrites what it did not write, refuses damaged checkpoints, and
answers a command-line mistake with one line and exit 2 — tried on real files and real processes."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxnets.checkpoint import CheckpointError
from jaxnets.cli import main
from jaxnets.inference import Predictor
from jaxnets.train import TrainConfig, fit

RUN = dict(model="logistic_regression", data="digits", size=8, channels=1, batch_size=64, quiet=True)
RUN_ARGS = ["train", "--model", "logistic_regression", "--data", "digits", "--size", "8", "--channels", "1",
            "--quiet"]


def _cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "jaxnets", *args], capture_output=True, text=True, **kwargs)


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under root (links not followed) with its content hash or link target: equal snapshots mean
    nothing was added, removed or changed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_file():
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


def run_main(capsys, *argv) -> tuple[int, list[str]]:
    """The real CLI entry point in-process: (exit code, stderr lines). Raising anything but SystemExit (argparse's
    own way out) would mean a traceback."""
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hardening") / "run"
    fit(TrainConfig(epochs=2, out=str(out), **RUN))
    return out


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "run", symlinks=True))


def _best_step(run: Path) -> Path:
    """The step `which="best"` loads, as the model card names it."""
    import json

    best = json.loads((run / "checkpoints" / "model_card.json").read_text())["best"]["epoch"]
    return run / "checkpoints" / str(best)


def _largest_array_file(step: Path) -> Path:
    files = [p for p in (step / "model").rglob("*") if p.is_file() and p.parent.name == "d"]
    return max(files, key=lambda p: p.stat().st_size)


# ---------------------------------------------------------------------------------------------- data loss

def test_a_foreign_checkpoints_folder_is_refused_and_left_exactly_as_it_was(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "checkpoints" / "best").mkdir(parents=True)
    (out / "checkpoints" / "model.pt").write_bytes(b"someone's weights")
    (out / "checkpoints" / "best" / "w.bin").write_bytes(b"\x00" * 100)
    before = snapshot(out)
    for extra in ([], ["--overwrite"]):
        code, err = run_main(capsys, *RUN_ARGS, "--epochs", "1", "--out", str(out), *extra)
        assert code == 2 and len(err) == 1, err
        assert "checkpoints/best" in err[0] and "refusing" in err[0]
        assert snapshot(out) == before


@pytest.mark.parametrize("name", ["config.json", "history.csv", "metrics.json", "history.json", "curves.png"])
def test_a_run_file_jaxnets_did_not_write_is_never_overwritten(tmp_path, capsys, name):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text("my own notes")
    before = snapshot(out)
    for extra in ([], ["--overwrite"]):
        code, err = run_main(capsys, *RUN_ARGS, "--epochs", "1", "--out", str(out), *extra)
        assert code == 2 and len(err) == 1 and name in err[0], err
        assert snapshot(out) == before


def test_overwrite_deletes_only_the_runs_own_files_and_keeps_the_users(run_copy, capsys):
    (run_copy / "notes.txt").write_text("keep me")
    (run_copy / "checkpoints" / "keep.txt").write_text("mine too")
    before = snapshot(run_copy)
    code, err = run_main(capsys, *RUN_ARGS, "--epochs", "1", "--out", str(run_copy), "--overwrite")
    assert code == 2 and "checkpoints/keep.txt" in err[0] and snapshot(run_copy) == before
    (run_copy / "checkpoints" / "keep.txt").unlink()
    with open(run_copy / "history.csv", "a") as f:
        f.write("a line the user added\n")  # changed since jaxnets wrote it: no longer provably ours
    before = snapshot(run_copy)
    code, err = run_main(capsys, *RUN_ARGS, "--epochs", "1", "--out", str(run_copy), "--overwrite")
    assert code == 2 and "history.csv" in err[0] and snapshot(run_copy) == before
    (run_copy / "history.csv").unlink()
    assert run_main(capsys, *RUN_ARGS, "--epochs", "1", "--out", str(run_copy), "--overwrite")[0] == 0
    assert (run_copy / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir() if p.name.isdigit()) == ["1"]


def test_a_user_file_inside_a_step_folder_is_never_deleted(run_copy, capsys):
    notes = _best_step(run_copy) / "my_notes.txt"
    notes.write_text("mine")
    before = snapshot(run_copy)
    for extra in (["--overwrite"], ["--resume", "--epochs", "3"]):
        code, err = run_main(capsys, *RUN_ARGS, "--epochs", "1", "--out", str(run_copy), *extra)
        assert code == 2 and len(err) == 1 and "my_notes.txt" in err[0] and "refusing" in err[0], err
        assert snapshot(run_copy) == before


def test_leftovers_of_a_kill_are_recognised_as_ours_and_cleaned(run_copy, capsys):
    (run_copy / "checkpoints" / ".model_card.json.4242.tmp").write_text("{half a card")
    (run_copy / ".history.json.4242.tmp").write_text("[half")
    (run_copy / ".jaxnets-old-checkpoints" / "1" / "model").mkdir(parents=True)  # a kill during --overwrite
    assert run_main(capsys, *RUN_ARGS, "--epochs", "3", "--out", str(run_copy), "--resume")[0] == 0
    leftovers = [".history.json.4242.tmp", ".jaxnets-old-checkpoints", "checkpoints/.model_card.json.4242.tmp"]
    assert not any((run_copy / name).exists() for name in leftovers)


def test_a_second_run_without_resume_or_overwrite_is_refused(run_copy, capsys):
    before = snapshot(run_copy)
    code, err = run_main(capsys, *RUN_ARGS, "--epochs", "3", "--out", str(run_copy))
    assert code == 2 and len(err) == 1 and "--resume" in err[0] and "--overwrite" in err[0]
    assert snapshot(run_copy) == before


def test_a_refused_resume_for_another_model_changes_nothing(run_copy, capsys):
    before = snapshot(run_copy)
    code, err = run_main(capsys, "train", "--model", "mlp", "--data", "digits", "--size", "8", "--channels", "1",
                         "--quiet", "--epochs", "3", "--out", str(run_copy), "--resume")
    assert code == 2 and len(err) == 1 and "cannot resume" in err[0] and "model" in err[0]
    assert snapshot(run_copy) == before  # config.json included


def test_a_failed_start_leaves_no_directory_behind(tmp_path, capsys):
    out = tmp_path / "never"
    code, err = run_main(capsys, *RUN_ARGS, "--epochs", "1", "--data", str(tmp_path / "no_such_folder"),
                         "--out", str(out))
    assert code == 2 and len(err) == 1
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- integrity

def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(0, len(data), max(1, len(data) // 16)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flipped", "truncated", "missing", "added"])
def test_a_damaged_checkpoint_is_refused_everywhere_naming_the_file(run_copy, tmp_path, capsys, damage):
    step = _best_step(run_copy)
    target = _largest_array_file(step)
    if damage == "flipped":
        _corrupt(target)
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif damage == "missing":
        target.unlink()
    else:
        target = step / "model" / "extra.bin"
        target.write_bytes(b"x")
    with pytest.raises(CheckpointError, match=target.name):
        Predictor.from_checkpoint(run_copy)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    for argv in (["predict", "--checkpoint", str(run_copy), str(image)],
                 ["evaluate", "--checkpoint", str(run_copy), "--data", "digits"],
                 [*RUN_ARGS, "--epochs", "3", "--out", str(run_copy), "--resume"]):
        before = snapshot(run_copy)
        code, err = run_main(capsys, *argv)
        assert code == 2 and len(err) == 1 and target.name in err[0], (argv, err)
        assert snapshot(run_copy) == before


def test_package_refuses_a_damaged_checkpoint_and_stores_nothing(run_copy, tmp_path):
    _corrupt(_largest_array_file(_best_step(run_copy)))
    home = tmp_path / "bentoml"
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    out = _cli("package", "--checkpoint", str(run_copy), env=env)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "corrupted" in out.stderr
    assert not list((home / "models").rglob("*.json")) if (home / "models").exists() else True


@pytest.mark.parametrize("kind", ["link_to_private_file", "link_to_dev_zero", "fifo"])
def test_links_and_special_files_inside_a_checkpoint_are_refused_not_followed(run_copy, tmp_path, kind):
    step = _best_step(run_copy)
    target = _largest_array_file(step)
    target.unlink()
    if kind == "link_to_private_file":
        private = tmp_path / "secret.txt"
        private.write_text("private")
        target.symlink_to(private)
    elif kind == "link_to_dev_zero":
        target.symlink_to("/dev/zero")
    else:
        os.mkfifo(target)
    with pytest.raises(CheckpointError, match=r"link|not a regular file"):
        Predictor.from_checkpoint(run_copy)
    from jaxnets.serving.package import package_checkpoint

    with pytest.raises(CheckpointError):
        package_checkpoint(run_copy)


def test_a_linked_or_broken_model_card_is_refused(run_copy, tmp_path, capsys):
    card = run_copy / "checkpoints" / "model_card.json"
    text = card.read_text()
    card.write_text(text[: len(text) // 2])
    code, err = run_main(capsys, "predict", "--checkpoint", str(run_copy), str(card))
    assert code == 2 and "not valid JSON" in err[0]
    card.unlink()
    card.symlink_to("/dev/zero")
    code, err = run_main(capsys, "predict", "--checkpoint", str(run_copy), str(card))
    assert code == 2 and "symbolic link" in err[0]


def test_non_finite_weights_give_an_error_not_nan_probabilities(trained, tmp_path, capsys):
    import jax

    predictor = Predictor.from_checkpoint(trained)
    predictor.variables = jax.tree.map(lambda a: a * np.nan, predictor.variables)
    from jaxnets.inference import NonFiniteOutputError

    with pytest.raises(NonFiniteOutputError, match="non-finite"):
        predictor.predict([np.zeros((8, 8), np.uint8)])


# ---------------------------------------------------------------------------------------------- mistakes

@pytest.mark.parametrize("args, says", [
    (["--batch-size", "0"], "batch_size"), (["--batch-size", "-4"], "batch_size"), (["--lr", "0"], "lr"),
    (["--lr", "-0.1"], "lr"), (["--lr", "nan"], "lr"), (["--epochs", "0"], "epochs"),
    (["--size", "0"], "size"), (["--model", "lenet5", "--size", "8"], "smallest input"),
    (["--val-split", "0.6", "--test-split", "0.5"], "val_split"), (["--optimizer", "rmsprop", "--nesterov"],
                                                                   "nesterov"),
    (["--label-smoothing", "1"], "label_smoothing"), (["--patience", "0"], "patience"), (["--seed", "-1"], "seed"),
    (["--resume", "--overwrite"], "not both"), (["--optimizer", "lion"], "invalid choice"),
    (["--batch-size", "many"], "invalid int"), (["--labels", ","], "labels"),
    (["--model", "mlp", "--hidden-sizes", "a,b"], "--hidden-sizes"), (["--init", "nope"], "init"),
    (["--model", "alexnet", "--dropout-rate", "2"], "dropout_rate"), (["--momentum", "1.5"], "momentum"),
])
def test_a_training_mistake_is_one_line_and_exit_2_before_anything_is_written(tmp_path, capsys, args, says):
    out = tmp_path / "out"
    code, err = run_main(capsys, *RUN_ARGS, "--epochs", "1", "--out", str(out), *args)
    assert code == 2 and len(err) == 1 and says in err[0], err
    assert not out.exists()


def test_an_output_inside_a_file_or_unwritable_place_is_one_line(tmp_path, capsys):
    afile = tmp_path / "a_file"
    afile.write_text("x")
    for out in (afile, afile / "run", Path("/proc/jaxnets-run")):
        code, err = run_main(capsys, *RUN_ARGS, "--epochs", "1", "--out", str(out))
        assert code == 2 and len(err) == 1 and str(out.parent if out.parent == afile else out) in err[0], err
    assert afile.read_text() == "x"


@pytest.mark.parametrize("which, says", [("nope", "'best', 'latest' or an epoch"), ("0", "epoch number"),
                                         ("99", "no checkpoint of epoch 99")])
def test_which_is_checked_with_a_one_line_answer(trained, tmp_path, capsys, which, says):
    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    code, err = run_main(capsys, "predict", "--checkpoint", str(trained), "--which", which, str(image))
    assert code == 2 and len(err) == 1 and says in err[0], err


def test_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    code, err = run_main(capsys, "evaluate", "--checkpoint", str(tmp_path / "nothing"), "--data", "digits")
    assert code == 2 and len(err) == 1 and "not a jaxnets checkpoint" in err[0]


def test_ctrl_c_says_where_it_stopped_and_how_to_resume_then_resume_finishes(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", "lenet5", "--data", "digits", "--epochs", "40", "--batch-size", "1", "--out", str(out)]
    # Ctrl-C as a terminal delivers it; the child re-enables SIGINT, which a shell running the tests in the
    # background would have it ignore (POSIX shells do that for background jobs)
    enable = "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); " \
             "sys.argv = ['jaxnets', *sys.argv[1:]]; runpy.run_module('jaxnets', run_name='__main__')"
    proc = subprocess.Popen([sys.executable, "-c", enable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 180
    while not (out / "checkpoints" / "1" / "jaxnets_checksums.json").exists() and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    time.sleep(0.2)  # inside epoch 2 (an epoch of 1,437 single-image steps)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert "interrupted in epoch" in last and "latest checkpoint is epoch 1" in last and "--resume" in last
    resume = last.split("Resume with: ")[1].split()
    assert resume[0] == "jaxnets" and resume[-1] == "--resume"
    done = _cli(*resume[1:], "--epochs", "3")  # the saved options, with fewer epochs to keep the test short
    assert done.returncode == 0, done.stderr
    assert "epochs: 40 → 3" in done.stderr
    import json

    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1, 2, 3]


def test_loading_a_checkpoint_prints_no_library_noise(trained):
    code = f"from jaxnets.inference import Predictor; Predictor.from_checkpoint({str(trained)!r}).warmup()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr


# ---------------------------------------------------------------------------------------------- found by attack

def test_a_missing_manifest_is_refused_unless_a_kill_left_that_step_half_saved(run_copy, capsys, trained):
    import json

    latest = run_copy / "checkpoints" / "2"
    (latest / "jaxnets_checksums.json").unlink()
    _corrupt(_largest_array_file(latest))  # nobody could tell now: the step must never be trusted
    before = snapshot(run_copy)
    code, err = run_main(capsys, *RUN_ARGS, "--epochs", "3", "--out", str(run_copy), "--resume")
    assert code == 2 and len(err) == 1 and "jaxnets_checksums.json is missing" in err[0]
    assert snapshot(run_copy) == before
    # the same step named as the one being saved when a kill came: discarded, the run resumes before it
    (run_copy / "checkpoints" / ".jaxnets-saving").write_text("2")
    assert run_main(capsys, *RUN_ARGS, "--epochs", "3", "--out", str(run_copy), "--resume")[0] == 0
    history = json.loads((run_copy / "history.json").read_text())
    expected = json.loads((trained / "history.json").read_text())
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in h]  # noqa: E731
    assert strip(history)[:2] == strip(expected) and [h["epoch"] for h in history] == [1, 2, 3]


@pytest.mark.parametrize("plant", ["trash_without_token", "numbered_with_orbax_marker", "orbax_tmp_named"])
def test_folders_that_only_look_like_jaxnets_are_never_deleted(run_copy, capsys, plant):
    ckpt = run_copy / "checkpoints"
    folder = {"trash_without_token": ".jaxnets-trash", "numbered_with_orbax_marker": "7",
              "orbax_tmp_named": "5.orbax-checkpoint-tmp-1"}[plant]
    if plant == "trash_without_token":
        shutil.rmtree(ckpt / folder)
    (ckpt / folder).mkdir()
    (ckpt / folder / "_CHECKPOINT_METADATA").write_text("{}")
    (ckpt / folder / "thesis.tex").write_text("years of work")
    before = snapshot(run_copy)
    for extra in (["--overwrite"], ["--resume", "--epochs", "3"]):
        code, err = run_main(capsys, *RUN_ARGS, "--epochs", "1", "--out", str(run_copy), *extra)
        assert code == 2 and len(err) == 1 and folder in err[0], err
        assert snapshot(run_copy) == before


def test_overwrite_refuses_a_step_whose_bytes_changed_even_at_the_same_size(run_copy, capsys):
    _corrupt(_largest_array_file(run_copy / "checkpoints" / "2"))
    before = snapshot(run_copy)
    code, err = run_main(capsys, *RUN_ARGS, "--epochs", "1", "--out", str(run_copy), "--overwrite")
    assert code == 2 and "corrupted" in err[0] and snapshot(run_copy) == before


def test_an_added_file_named_like_the_manifest_is_still_an_added_file(run_copy, tmp_path, capsys):
    payload = _best_step(run_copy) / "model" / "jaxnets_checksums.json.payload"
    payload.write_bytes(b"\x00" * 1000)
    with pytest.raises(CheckpointError, match="payload"):
        Predictor.from_checkpoint(run_copy)


@pytest.mark.parametrize("kind", ["folder", "link"])
def test_a_run_marker_that_is_not_a_file_is_refused_untouched(tmp_path, capsys, kind):
    out = tmp_path / "out"
    out.mkdir()
    (out / "userfile").write_text("{}")
    if kind == "folder":
        (out / ".jaxnets-run.json").mkdir()
    else:
        (out / ".jaxnets-run.json").symlink_to("userfile")
    before = snapshot(out)
    code, err = run_main(capsys, *RUN_ARGS, "--epochs", "1", "--out", str(out))
    assert code == 2 and len(err) == 1 and ".jaxnets-run.json" in err[0] and snapshot(out) == before


@pytest.mark.parametrize("edit, says", [
    (lambda c: c.update(classes=[f"c{i}" for i in range(10)]), "classes"),
    (lambda c: c.update(monitor="val_loss"), "monitor"),
])
def test_an_edited_card_in_a_run_is_refused_by_every_consumer(run_copy, tmp_path, capsys, edit, says):
    import json

    card_path = run_copy / "checkpoints" / "model_card.json"
    card = json.loads(card_path.read_text())
    edit(card)
    card_path.write_text(json.dumps(card))
    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    for argv in (["predict", "--checkpoint", str(run_copy), str(image)],
                 ["evaluate", "--checkpoint", str(run_copy), "--data", "digits"],
                 ["package", "--checkpoint", str(run_copy)]):
        code, err = run_main(capsys, *argv)
        assert code == 2 and len(err) == 1 and "model_card.json says another" in err[0] and says in err[0], argv


def test_a_loss_sum_that_overflows_is_a_divergence_not_a_crash(tmp_path, capsys):
    code, err = run_main(capsys, *RUN_ARGS, "--epochs", "2", "--lr", "5e35", "--optimizer", "sgd",
                         "--out", str(tmp_path / "r"))
    assert code == 3 and "loss became" in err[-1] and "learning rate" in err[-1]


@pytest.mark.parametrize("args, says", [(["--out", ""], "out must name"), (["--data", " "], "data must name"),
                                        (["--seed", "99999999999999999999"], "seed")])
def test_empty_names_and_huge_seeds_are_one_line(tmp_path, capsys, args, says):
    code, err = run_main(capsys, *RUN_ARGS, "--epochs", "1", "--out", str(tmp_path / "r"), *args)
    assert code == 2 and len(err) == 1 and says in err[0], err


def test_predict_still_uses_the_best_step_beside_a_step_a_kill_left_half_saved(run_copy, capsys):
    import json

    best = json.loads((run_copy / "checkpoints" / "model_card.json").read_text())["best"]["epoch"]
    half = run_copy / "checkpoints" / "9"  # the next save, cut short: orbax's files, no card copy, no checksums
    shutil.copytree(run_copy / "checkpoints" / str(best), half)
    (half / "jaxnets_checksums.json").unlink()
    (half / "model_card.json").unlink()
    (half / "metrics" / "metrics").write_text(json.dumps({"val_accuracy": 0.0}))  # not the best one
    (run_copy / "checkpoints" / ".jaxnets-saving").write_text("9")
    assert Predictor.from_checkpoint(run_copy).step == best
    with pytest.raises(CheckpointError, match="9"):
        Predictor.from_checkpoint(run_copy, which="latest")


def _half_saved_step(run: Path, step: int, dropped: list[int]) -> None:
    """What a kill leaves between orbax's save of `step` and its checksums: the step's files without a manifest,
    the marker naming it, and the steps orbax dropped for it already moved into the trash."""
    ckpt = run / "checkpoints"
    shutil.copytree(ckpt / "2", ckpt / str(step))
    (ckpt / str(step) / "jaxnets_checksums.json").unlink()
    for old in dropped:
        (ckpt / str(old)).rename(ckpt / ".jaxnets-trash" / str(old))
    (ckpt / ".jaxnets-saving").write_text(str(step))


def test_steps_dropped_for_a_step_a_kill_cut_short_are_taken_back_not_lost(run_copy, capsys, trained):
    import json

    from jaxnets.checkpoint import Checkpoints, discard_pending_step

    ckpt = run_copy / "checkpoints"
    steps = sorted(p.name for p in ckpt.iterdir() if p.name.isdecimal())
    _half_saved_step(run_copy, 3, dropped=[int(s) for s in steps])
    assert discard_pending_step(ckpt) == 3
    assert sorted(p.name for p in ckpt.iterdir() if p.name.isdecimal()) == steps  # back, verified, whole
    manager = Checkpoints(ckpt, read_only=True)
    assert manager.latest_step() == 2
    manager.close()
    # a second kill in the same window (its discarded step already in the trash under that name) and a resume
    _half_saved_step(run_copy, 3, dropped=[2])
    code, _ = run_main(capsys, *RUN_ARGS, "--epochs", "3", "--out", str(run_copy), "--resume")
    assert code == 0
    history = json.loads((run_copy / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[:2] == json.loads((trained / "history.json").read_text())  # epochs 1–2 not run again: same seconds


def test_a_trash_folder_a_kill_left_without_its_token_is_not_a_refusal(run_copy, capsys):
    trash = run_copy / "checkpoints" / ".jaxnets-trash"
    shutil.rmtree(trash)
    trash.mkdir()  # the kill came between creating it and its token
    code, _ = run_main(capsys, *RUN_ARGS, "--epochs", "3", "--out", str(run_copy), "--resume")
    assert code == 0 and (trash / ".jaxnets").is_file()


def test_a_resume_may_change_the_dtype_and_every_step_stays_usable(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_main(capsys, *RUN_ARGS, "--epochs", "2", "--lr", "0.05", "--out", str(run))[0] == 0
    code, err = run_main(capsys, *RUN_ARGS, "--epochs", "3", "--out", str(run), "--resume", "--dtype", "bfloat16",
                         "--lr", "1000")  # epoch 3 overshoots: the float32 epoch 2 stays the best
    assert code == 0, err
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdecimal())
    assert steps == [2, 3]
    for step in steps:  # the float32 best and the bfloat16 latest
        assert Predictor.from_checkpoint(run, which=step).step == step


def test_a_resume_with_other_preprocessing_is_refused_untouched(run_copy, capsys):
    before = snapshot(run_copy)
    code, err = run_main(capsys, *RUN_ARGS, "--epochs", "3", "--out", str(run_copy), "--resume",
                         "--normalize", "imagenet")
    assert code == 2 and len(err) == 1 and "preprocess" in err[0] and snapshot(run_copy) == before


def test_a_step_saved_before_steps_carried_the_card_is_still_usable(run_copy):
    from jaxnets.checkpoint import write_checksums

    step = _best_step(run_copy)
    (step / "model_card.json").unlink()
    write_checksums(step)  # as jaxnets 0.1 wrote it: checksums without a card copy
    assert Predictor.from_checkpoint(run_copy).step == int(step.name)
