"""The command dispatcher: one error path for every stage."""

import pytest

from msg3d import cli


class FailingStage:
    """A stage module whose run raises ``error``."""

    def __init__(self, error):
        self.error = error

    def add_arguments(self, parser):
        pass

    def run(self, args):
        raise self.error


@pytest.mark.parametrize("error", [ValueError("bad.pkl: line 3: not a number"),
                                   FileNotFoundError("bad.pkl: not found")])
def test_a_stage_error_is_one_line_and_exit_code_2(monkeypatch, capsys, error):
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: FailingStage(error))
    assert cli.main(["derive"]) == 2
    assert capsys.readouterr().err == f"msg3d derive: error: {error}\n"


def test_a_data_loader_worker_error_loses_the_worker_traceback(monkeypatch, capsys):
    # the text torch's DataLoader re-raises in the main process for an error in a worker
    worker = ValueError("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                        "last):\n  File \"store.py\", line 9, in read_sample\nValueError: store s: sample 4 (S004) "
                        "is cut short in data.npy\n")
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: FailingStage(worker))
    assert cli.main(["train"]) == 2
    assert capsys.readouterr().err == "msg3d train: error: store s: sample 4 (S004) is cut short in data.npy\n"


def test_other_errors_are_not_swallowed(monkeypatch):
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: FailingStage(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["train"])
