"""Bad input gets one clear message before any compilation, and nothing is overwritten."""

import errno
import json

import pytest

import anyskill.cli as cli
from anyskill.algos.crl.config import CRLConfig
from anyskill.cli import main


def run_cli(capsys, *args):
    try:
        code = main(list(args))
    except SystemExit as e:  # tyro exits on parse/validation errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out + out.err


def test_unknown_env_suggests(capsys):
    code, text = run_cli(capsys, "train", "crl", "--env", "pointmaze-uu", "--run-dir", "x")
    assert code != 0 and "Did you mean 'pointmaze-u'" in text


def test_unknown_preset_suggests(capsys):
    code, text = run_cli(capsys, "train", "crl", "--preset", "pointmaze-uu")
    assert code == 2 and "unknown preset" in text and "Did you mean" in text


def test_depth_not_multiple_of_4(capsys):
    code, text = run_cli(capsys, "train", "crl", "--depth", "10")
    assert code == 2 and "multiple of 4, got 10" in text
    code, text = run_cli(capsys, "train", "crl", "--critic-depth", "6")
    assert code != 0 and "multiple of 4, got 6" in text


def test_unknown_command(capsys):
    code, text = run_cli(capsys, "trian")
    assert code == 2 and "Did you mean 'train'" in text


def test_counts_must_divide_devices():
    cfg = CRLConfig()
    cfg.check_devices(1)
    with pytest.raises(
        ValueError, match="num_envs=256 must be divisible by the number of devices \\(3\\)"
    ):
        cfg.check_devices(3)


def test_invalid_combinations():
    with pytest.raises(
        ValueError, match="min_replay_steps \\(600\\) cannot exceed replay_capacity"
    ):
        CRLConfig(min_replay_steps=600, replay_capacity=500)
    with pytest.raises(ValueError, match="too small"):
        CRLConfig(total_env_steps=1000)
    with pytest.raises(ValueError, match="discount"):
        CRLConfig(discount=1.0)


def test_eval_on_a_dir_that_is_not_a_run(capsys, tmp_path):
    code, text = run_cli(capsys, "eval", str(tmp_path))
    assert code == 2 and "is not a run directory" in text


def test_existing_run_is_not_overwritten(capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"env": "pointmaze-u"}))
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 0}\n')
    code, text = run_cli(capsys, "train", "crl", "--run-dir", str(tmp_path))
    assert code == 2 and "already holds a run" in text and "--resume" in text
    assert (tmp_path / "metrics.jsonl").read_text() == '{"epoch": 0}\n'


def test_help_lists_commands(capsys):
    code, text = run_cli(capsys, "--help")
    assert code == 0 and "train crl" in text and "eval" in text


# ---- main(): user-caused failures are one line and exit 2; bugs keep their traceback ----


def run_raising(capsys, monkeypatch, exc):
    def boom(args):
        raise exc

    monkeypatch.setitem(cli.COMMANDS, "boom", boom)
    code = main(["boom"])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    "exc, words",
    [
        (
            FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/y"),
            ["/x/y", "does not exist"],
        ),
        (PermissionError(errno.EACCES, "Permission denied", "/x/y"), ["/x/y", "permission"]),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "/x"), ["/x", "is a directory"]),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/f/x"), ["/f/x", "not a directory"]),
        (
            OSError(errno.ENOSPC, "No space left on device", "/x/ckpt"),
            ["/x/ckpt", "space", "again"],
        ),
        (
            OSError(errno.EROFS, "Read-only file system", "/ro/x"),
            ["/ro/x", "read-only", "writable"],
        ),
        (FileExistsError("dataset /d already exists; choose a new --out"), ["/d already exists"]),
    ],
)
def test_os_errors_are_one_line_naming_the_path(capsys, monkeypatch, exc, words):
    code, out, err = run_raising(capsys, monkeypatch, exc)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("anyskill: error: ") and all(w in err for w in words), err


def test_a_json_error_names_the_file(capsys, monkeypatch, tmp_path):
    path = tmp_path / "meta" / "info.json"
    path.parent.mkdir()
    path.write_text("{not json")

    def load(args):
        import json

        return json.loads(path.read_text())

    monkeypatch.setitem(cli.COMMANDS, "boom", load)
    code = main(["boom"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(path) in err and "line 1 column 2" in err


def test_interrupt_is_one_line_and_exit_130(capsys, monkeypatch):
    code, out, err = run_raising(capsys, monkeypatch, KeyboardInterrupt())
    assert code == 130 and len(err.strip().splitlines()) == 1 and "interrupted" in err


@pytest.mark.parametrize("exc", [TypeError("a bug"), AttributeError("a bug")])
def test_programming_errors_keep_their_traceback(capsys, monkeypatch, exc):
    with pytest.raises(type(exc)):
        run_raising(capsys, monkeypatch, exc)


def test_a_multiline_message_becomes_one_line(capsys, monkeypatch):
    code, out, err = run_raising(capsys, monkeypatch, ValueError("first\n  second"))
    assert code == 2 and err == "anyskill: error: first second\n"


# ---- parse errors: one line, naming the command, the flag and the value ----
@pytest.mark.parametrize(
    "argv, line",
    [
        (
            ["data", "record", "--out", "x", "--episodes", "abc"],
            "anyskill data record: error: --episodes expects an integer, got 'abc'",
        ),
        (
            ["data", "record", "--episodes", "3"],
            "anyskill data record: error: missing required argument --out PATH",
        ),
        (
            ["data", "record", "--out", "x", "--epsiodes", "3"],
            "anyskill data record: error: unrecognized options: --epsiodes, 3 "
            "(did you mean --episodes?)",
        ),
        (
            ["eval", "--episodes", "3"],
            "anyskill eval: error: missing required argument PATH "
            "(A run directory written by `anyskill train crl`)",
        ),
        (["serve", "--port"], "anyskill serve: error: --port expects a value (INT), got none"),
        (
            ["render", "--steps", "x"],
            "anyskill render: error: --steps expects an integer or None, got 'x'",
        ),
        (
            ["data", "render", "p", "--episodes", "1", "b"],
            "anyskill data render: error: --episodes expects integers, got '1 b'",
        ),
        (
            ["train", "crl", "--energy", "cosine"],
            "anyskill train crl: error: --energy must be one of l2, dot, got 'cosine'",
        ),
        (
            ["train", "crl", "--critic-depth", "6"],
            "anyskill train crl: error: critic_depth counts Dense layers inside residual "
            "blocks of 4 and must be a non-negative multiple of 4, got 6 (try 8)",
        ),
        (["envs", "--bogus"], "anyskill envs: error: unrecognized options: --bogus"),
    ],
)
def test_parse_errors_are_one_line(capsys, argv, line):
    code = main(argv)
    out = capsys.readouterr()
    assert (code, out.out, out.err) == (2, "", line + "\n")


def test_condense_falls_back_to_tyros_box_text():
    box = (
        "╭─ Some new error ─────────╮\n"
        "│ Something went wrong      │\n"
        "│     with --flag VALUE     │\n"
        "│     its help text         │\n"
        "│ ───────────────────────── │\n"
        "│ For full helptext, run    │\n"
        "│     anyskill x --help     │\n"
        "╰───────────────────────────╯\n"
    )
    assert cli._condense(box) == "something went wrong"


def test_help_is_unchanged(capsys):
    with pytest.raises(SystemExit) as e:
        main(["data", "record", "--help"])
    out = capsys.readouterr()
    assert e.value.code == 0 and out.err == ""
    assert out.out.startswith("usage: anyskill data record") and "--episodes INT" in out.out


def test_condense_reads_tyros_plain_text_box_too():
    plain = (
        " Unrecognized options             \n"
        " -------------------------------- \n"
        "  Unrecognized options: --epsiodes \n"
        "  --------------------------------\n"
        "  Perhaps you meant:              \n"
        "      --episodes INT              \n"
        "          Episodes to record.     \n"
        "  --------------------------------\n"
        "  For full helptext, run anyskill data record --help\n"
    )
    assert cli._condense(plain) == "unrecognized options: --epsiodes (did you mean --episodes?)"


def test_condense_reads_tyros_drawn_box():
    box = (
        "╭─ Unrecognized options ──────────────╮\n"
        "│ Unrecognized options: --epsiodes, 3 │\n"
        "│ ─────────────────────────────────── │\n"
        "│ Perhaps you meant:                  │\n"
        "│     --episodes INT                  │\n"
        "│         Episodes to record.         │\n"
        "│ ─────────────────────────────────── │\n"
        "│ For full helptext, run x --help     │\n"
        "╰─────────────────────────────────────╯\n"
    )
    assert cli._condense(box) == ("unrecognized options: --epsiodes, 3 (did you mean --episodes?)")


def test_condense_lists_missing_arguments_and_skips_help():
    missing = (
        "╭─ Required options ────────────────╮\n"
        "│ Missing from anyskill data record: │\n"
        "│     --out PATH                     │\n"
        "│         Dataset root. (required)   │\n"
        "│     --env STR                      │\n"
        "│         The env. (required)        │\n"
        "╰────────────────────────────────────╯\n"
    )
    assert cli._condense(missing) == "missing from anyskill data record: --out PATH, --env STR"
    value = (
        "╭─ Value error ──────────────────────────────────────╮\n"
        "│ Error parsing --num-envs: invalid literal: '1.5'   │\n"
        "│ ────────────────────────────────────────────────── │\n"
        "│ Argument helptext:                                 │\n"
        "│     --num-envs INT                                 │\n"
        "│     Parallel environments. (default: 64)           │\n"
        "╰────────────────────────────────────────────────────╯\n"
    )
    assert cli._condense(value) == "error parsing --num-envs: invalid literal: '1.5'"


def test_parse_errors_are_one_line_without_tyros_private_hook(monkeypatch, capsys):
    # tyro._errors is private: if it changes, tyro's own box is condensed instead.
    import contextlib

    import tyro._errors

    monkeypatch.setattr(tyro._errors, "on_parse_error", lambda hook: contextlib.nullcontext())
    for argv, words in [
        (["data", "record", "--out", "x", "--episodes", "abc"], ["--episodes", "'abc'"]),
        (["data", "record"], ["missing", "--out PATH"]),
        (["envs", "--bogus"], ["--bogus"]),
    ]:
        code = main(argv)
        out = capsys.readouterr()
        assert code == 2 and out.out == "" and len(out.err.strip().splitlines()) == 1, out.err
        assert out.err.startswith(f"anyskill {' '.join(argv[: 2 if argv[0] == 'data' else 1])}")
        assert all(w in out.err for w in words), out.err
