"""Every `python -m train` subcommand parses its flags and documents them."""

from __future__ import annotations

import pytest

from train.__main__ import COMMANDS, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_of_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: python -m train " + command in out
    assert "(default:" in out or command == "info"  # it takes no options


def test_paper_defaults_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["style", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for text in ("--iterations ITERATIONS, --max-iters ITERATIONS", "(default: 40000)",
                 "(default: 256)", "(default: 0.001)", "(default: batch)", "(default: 4)"):
        assert text in out


def test_fixed_options_list_their_choices(capsys):
    with pytest.raises(SystemExit):
        main(["superres", "--help"])
    out = capsys.readouterr().out
    for text in ("--norm {batch,instance,none}", "--upsample {transposed,resize_conv}",
                 "--padding {zero,reflect}", "--amp {auto,bf16,fp16,none}",
                 "--save-dtype {float16,float32}", "--loss {feat,pixel}"):
        assert text in out


def test_bad_choice_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["style", "--norm", "group"])
    assert e.value.code == 2
    assert "argument --norm: invalid choice: 'group'" in capsys.readouterr().err


def test_missing_data_folder_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["superres", "--loss", "pixel", "--data", str(tmp_path / "none"),
              "--store", str(tmp_path)])
    assert e.value.code == 2
    assert "image folder" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["style", "multistyle"])
def test_crops_larger_than_the_photos_are_a_clear_error(command, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--image-size", "32", "--crop-size", "128", "--store", str(tmp_path)])
    assert e.value.code == 2
    assert ("error: --crop-size 128 is larger than the photos, scaled to --image-size 32"
            in capsys.readouterr().err)
