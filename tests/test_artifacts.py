"""Output-folder locks (artifacts.output_lock): a second run into a folder in use is refused with
the holder's pid and host; a lock left by a killed run is taken over; a failing stage releases it.

The holder is always another real process (a Python child holding the lock, or a real
`kovocab` stage); the stages are real, on the real Korean Constitution text.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA, LLAMA2_MODEL

from kovocab.artifacts import LOCK, output_lock
from kovocab.cli import main
from kovocab.errors import OutputError

KOLAW = DATA / "konlpy_corpus" / "kolaw" / "constitution.txt"
HOLD = (
    "import sys, time\n"
    "from kovocab.artifacts import output_lock\n"
    "with output_lock(sys.argv[1]):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(120)\n"
)


@pytest.fixture
def holder(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Start a child process that holds the lock on a folder until the test kills it."""
    procs: list[subprocess.Popen[str]] = []

    def start(folder: Path) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_second_run_is_refused_with_pid_and_host_then_takes_over_after_a_kill(
    tmp_path: Path, holder, capsys, caplog  # type: ignore[no-untyped-def]
) -> None:
    out = tmp_path / "corpus"
    proc = holder(out)
    assert main(["shard", str(KOLAW), "--txt-mode", "paragraph", "--out", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert f"kovocab: error: {out} is in use by pid {proc.pid} on {socket.gethostname()}" in err
    assert sorted(p.name for p in out.iterdir()) == [LOCK]  # nothing written beside the holder

    # The holder dies without releasing: its lock file stays, naming a dead pid.
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / LOCK).read_text().split() == [str(proc.pid), socket.gethostname()]
    with caplog.at_level("WARNING", logger="kovocab.artifacts"):
        assert main(["shard", str(KOLAW), "--txt-mode", "paragraph", "--out", str(out), "-q"]) == 0
    assert f"taking over the lock of pid {proc.pid} on {socket.gethostname()}" in caplog.text
    assert (out / "manifest.json").is_file() and not (out / LOCK).exists()


def test_lock_is_released_after_an_exception_and_nests_in_one_process(tmp_path: Path, holder) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "tok"
    # A real stage failing inside its lock (a Korean "model" that is not a SentencePiece file).
    bad = tmp_path / "korean.model"
    bad.write_bytes(KOLAW.read_bytes()[:4096])
    from kovocab.tokenizer.merge import MergeVocabConfig, merge_vocab

    with pytest.raises(Exception) as failed:
        merge_vocab(MergeVocabConfig(base=DATA / "llama2_tokenizer" / "tokenizer.model", korean_model=bad,
                                     out_dir=out, target_vocab_size=33024))
    assert not isinstance(failed.value, OutputError)
    assert not (out / LOCK).exists()
    proc = holder(out)  # another process could take it
    proc.kill()
    proc.wait()

    with pytest.raises(RuntimeError, match="boom"), output_lock(out):
        raise RuntimeError("boom")
    assert not (out / LOCK).exists()

    with output_lock(out), output_lock(out):  # re-entrant: `kovocab run` holding a stage's folder
        assert (out / LOCK).read_text().split() == [str(os.getpid()), socket.gethostname()]
    assert not (out / LOCK).exists()


def test_lock_of_another_host_is_not_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / LOCK).write_text("4242 some-other-node\n")
    match = rf"{out} is in use by pid 4242 on some-other-node .*delete {out / LOCK}"
    with pytest.raises(OutputError, match=match), output_lock(out):
        pass
    assert (out / LOCK).read_text() == "4242 some-other-node\n"


@pytest.mark.parametrize("command", ["train-tokenizer", "merge-vocab", "report"])
def test_every_stage_command_refuses_a_folder_holding_user_files(
    tmp_path: Path, command: str, capsys
) -> None:
    """Each stage checks its folder before any work (the check once sat on the wrong function)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.md").write_text("mine\n", encoding="utf-8")
    args = {
        "train-tokenizer": [str(KOLAW), "--vocab-size", "1000"],
        "merge-vocab": ["--base", str(LLAMA2_MODEL), "--korean-model", str(LLAMA2_MODEL)],
        "report": ["--tokenizer", f"llama2={LLAMA2_MODEL}", "--text", f"ko={KOLAW}"],
    }[command]
    assert main([command, *args, "--out", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert "holds files kovocab did not write (notes.md)" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["notes.md"]
    assert (out / "notes.md").read_text(encoding="utf-8") == "mine\n"


def test_remove_outputs_removes_what_the_manifest_lists(tmp_path: Path) -> None:
    """Files owned only through the stage's manifest are still owned while they are removed."""
    from kovocab.artifacts import Owned, remove_outputs, write_manifest

    out = tmp_path / "stage"
    out.mkdir()
    (out / "made-by-the-stage.bin").write_bytes(b"x")
    write_manifest(out, "some_stage", {})
    (out / ".hidden").write_text("left alone", encoding="utf-8")
    remove_outputs(out, Owned("some_stage"), "some_stage")
    assert sorted(p.name for p in out.iterdir()) == [".hidden"]
