"""Shared assertion of the CLI tests: a bad input fails with exit code 2 and one clear line."""


def one_error_line(capsys, code, *needles):
    """Assert ``code`` is 2 and stderr holds one line (no traceback) containing every needle; return it."""
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err
