"""``manual-bp train --model.factory`` and ``ManualBPModule(factory=...)``: a user's own model, converted,
checked, trained, checkpointed and resumed; image-shaped data; the errors for a bad factory.

Runs are in-process (``manual_bp.lightning.cli.main``) and short: the one that trains a CNN to the
accuracy of "done" (>= 93% on the digits' 360 test images) takes 4 epochs, about 3 s here.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import manual_bp
from manual_bp import cli
from manual_bp._factory import FactoryError
from manual_bp.convert import is_functional
from manual_bp.lightning import ManualBPModule
from manual_bp.lightning.cli import main

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")

ROOT = Path(__file__).resolve().parent.parent

USER_CNN = """
from torch import nn


def cnn():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),  # (N, 8, 4, 4)
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),  # (N, 16, 2, 2)
        nn.Flatten(), nn.Linear(64, 10),
    )


def wrong_outputs():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 7))


def not_a_model():
    return 42
"""

QUIET = [
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--trainer.log_every_n_steps", "1",
    "--data.init_args.images", "true",
    "--model.loss", "cross_entropy",
    "--model.optimizer", "adam",
    "--model.lr", "0.003",
]  # fmt: skip


@pytest.fixture
def user_cnn(tmp_path: Path) -> str:
    """``path/to/my_models.py``, a user's file of factories (not on the import path)."""
    path = tmp_path / "my_models.py"
    path.write_text(USER_CNN)
    return str(path)


def _metrics(root: Path) -> list[dict[str, str]]:
    (path,) = root.glob("lightning_logs/version_*/metrics.csv")
    with path.open() as handle:
        return list(csv.DictReader(handle))


def _logged(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


def test_a_users_cnn_trains_from_the_command_line_with_explicit_backward_everywhere(
    tmp_path: Path, user_cnn: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    main([*QUIET, "--model.factory", f"{user_cnn}:cnn", "--trainer.max_epochs", "4",
          "--data.init_args.batch_size", "32", "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out
    accuracy = float(out.split("test accuracy: ")[1].split()[0])
    assert accuracy >= 0.93, out
    rows = _metrics(tmp_path)
    assert _logged(rows, "grad_check/explicit_share") == [1.0]  # every parameter's gradient is manual
    assert _logged(rows, "grad_check/max_rel_error")[0] <= 1e-6
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("explicit backward: ")]
    assert lines == [
        "explicit backward: 100% of parameter elements (10 of 10 tensors); 100% of graph nodes (11 of 11)"
    ]


def test_factory_path_is_in_the_checkpoint_and_resume_rebuilds_the_model(
    tmp_path: Path, user_cnn: str
) -> None:
    short = [*QUIET, "--model.factory", f"{user_cnn}:cnn", "--trainer.limit_train_batches", "3",
             "--trainer.limit_val_batches", "1", "--test", "false",
             "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    main([*short, "--trainer.max_epochs", "1"])
    main([*short, "--trainer.max_epochs", "2", "--ckpt_path", "last", "--seed_everything", "5"])
    first, resumed = (
        tmp_path / "lightning_logs" / f"version_{v}" / "checkpoints" / "last.ckpt" for v in (0, 1)
    )
    state = torch.load(resumed, weights_only=True)
    assert state["global_step"] == 6 and state["hyper_parameters"]["factory"] == f"{user_cnn}:cnn"
    assert torch.load(first, weights_only=True)["global_step"] == 3
    module = ManualBPModule.load_from_checkpoint(resumed)
    assert isinstance(module.net[0], manual_bp.Conv2d) and isinstance(module.net[1], manual_bp.BatchNorm2d)
    for key, value in module.state_dict().items():
        torch.testing.assert_close(value, state["state_dict"][key], rtol=0, atol=0)


def test_module_builds_and_converts_the_factorys_model(user_cnn: str) -> None:
    module = ManualBPModule(factory=f"{user_cnn}:cnn", loss="cross_entropy")
    kinds = [type(m) for m in module.net]
    assert kinds[:4] == [manual_bp.Conv2d, manual_bp.BatchNorm2d, manual_bp.ReLU, manual_bp.MaxPool2d]
    assert module.hparams.factory == f"{user_cnn}:cnn"
    module.check_network_fits((1, 8, 8), 10, "classification")
    with pytest.raises(ValueError, match=r"does not accept the data's 64 input features"):
        module.check_network_fits(64, 10, "classification")
    wrong = ManualBPModule(factory=f"{user_cnn}:wrong_outputs")
    with pytest.raises(
        ValueError,
        match=r"gives 7 outputs but the data has 10 classes; the model of .*wrong_outputs must end in 10",
    ):
        wrong.check_network_fits((1, 8, 8), 10, "classification")


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (
            "no_colon",
            r"--model\.factory expects 'package\.module:factory' or 'file\.py:factory', got 'no_colon'",
        ),
        ("no_such_module_xyz:f", r"--model\.factory: cannot import module 'no_such_module_xyz'"),
        ("missing.py:f", r"--model\.factory: no such file 'missing\.py'"),
        ("{user}:nothing", r"--model\.factory: module .* has no attribute 'nothing'"),
        ("{user}:not_a_model", r"returned a int; expected a torch\.nn\.Module"),
        ("tests._factories:cnn", r"returned a tuple of 2 items; expected a torch\.nn\.Module"),
        (
            "tests._factories:bad_raises",
            r"--model\.factory: tests\._factories:bad_raises\(\) raised RuntimeError",
        ),
    ],
    ids=["syntax", "no-module", "no-file", "no-attribute", "not-a-module", "check-factory", "raises"],
)
def test_bad_factories_name_expected_and_got(
    factory: str, message: str, user_cnn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # tests._factories imports from the repository root
    with pytest.raises(FactoryError, match=message):
        ManualBPModule(factory=factory.format(user=user_cnn))


def test_bad_factory_on_the_command_line_is_one_line_and_exit_two(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = cli.main(
        ["train", "--model.factory", "no_such_module_xyz:f", "--trainer.default_root_dir", str(tmp_path)]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("manual-bp: error: --model.factory: cannot import module 'no_such_module_xyz'")


def test_net_and_factory_together_and_functional_with_a_factory(user_cnn: str) -> None:
    with pytest.raises(ValueError, match=r"give net or factory, not both \(got a Linear and '.*:cnn'\)"):
        ManualBPModule(net=nn.Linear(64, 10), factory=f"{user_cnn}:cnn")
    with pytest.raises(
        ValueError, match=r"functional=True converts the model of a factory: give factory too"
    ):
        ManualBPModule(functional=True)
    module = ManualBPModule(factory=f"{user_cnn}:cnn", functional=True)
    assert module.hparams.functional and is_functional(module.net)
