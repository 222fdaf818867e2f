"""``python -m agnopt``: unknown methods and backends are usage errors (exit 2, a message
naming the option and the choices), found by a fresh-user trial: ``nist --method foo``
printed 54 ERROR rows and exited 0, ``nist --backend foo`` and ``fitbench --backend foo``
ended in tracebacks, ``tour --backends foo`` printed an empty table and exited 0."""

import pytest

from agnopt.__main__ import build_parser, main


@pytest.mark.parametrize("argv,option", [
    (["nist", "--method", "foo"], "--method"),
    (["nist", "--backend", "foo"], "--backend"),
    (["fitbench", "--backend", "foo"], "--backend"),
    (["fitbench", "--sweep", "--backends", "numpy,foo"], "--backends"),
    (["tour", "--backends", "foo", "--steps", "10"], "--backends"),
])
def test_unknown_choice_is_a_usage_error(capsys, argv, option):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert option in err and "foo" in err and "numpy" in err


def test_help_has_no_rst_markup():
    text = build_parser().format_help()
    assert "``" not in text and ":mod:" not in text
    assert "tour" in text and "gpucheck" in text
