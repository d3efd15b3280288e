"""User mistakes end in one line on stderr and exit code 2; nothing is loaded first."""

import json

import pytest

from safeedit.cli import main
from tests.conftest import tiny_instance, tiny_model, tiny_tokenizer


@pytest.fixture()
def tiny_files(tmp_path):
    model_dir = tmp_path / "model"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    data = tmp_path / "data.json"
    data.write_text(json.dumps([tiny_instance(s, s).to_record() for s in range(3)]))
    return model_dir, data


def run(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr().err.strip()


def test_three_user_mistakes_exit_2_with_one_line(tiny_files, tmp_path, capsys):
    model_dir, data = tiny_files
    code, err = run(["bench", "--method", "dinm", "--data", str(data), "--out", str(tmp_path / "r"),
                     "--set", "foo=1"], capsys)
    assert code == 2 and "unknown DINMConfig option(s) ['foo']" in err and err.count("\n") == 0
    code, err = run(["edit", "--model", str(model_dir), "--data", str(data), "--index", "7"], capsys)
    assert code == 2 and "index 7 out of range" in err and "3 records" in err
    config = tmp_path / "mistral.yaml"
    config.write_text("method: dinm\nmodel: mistralai/Mistral-7B-v0.1\nlr: 1e-5\n")
    code, err = run(["edit", "--model", str(model_dir), "--data", str(data), "--config", str(config)], capsys)
    assert code == 2 and "holds values for model 'mistralai/Mistral-7B-v0.1'" in err


def test_bad_index_text_and_method_kind(tiny_files, capsys):
    model_dir, data = tiny_files
    code, err = run(["edit", "--model", str(model_dir), "--data", str(data), "--index", "a-b"], capsys)
    assert code == 2 and "not a number" in err
    code, err = run(["edit", "--model", str(model_dir), "--data", str(data), "--method", "none"], capsys)
    assert code == 2 and "trains once" in err


def test_edit_one_instance_saves_without_sequential(tiny_files, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    model_dir, data = tiny_files
    out = tmp_path / "edited"
    assert main(["edit", "--model", str(model_dir), "--data", str(data), "--index", "1", "--steps", "1",
                 "--set", "lr=1e-2", "--set", "suffix=null", "--max-new-tokens", "2", "--out", str(out)]) == 0
    meta = json.loads((out / "safeedit.json").read_text())
    assert meta["indices"] == [1] and meta["config"]["lr"] == 0.01 and meta["config"]["suffix"] is None
    AutoModelForCausalLM.from_pretrained(out)
    code, err = run(["edit", "--model", str(model_dir), "--data", str(data), "--index", "0,1",
                     "--out", str(tmp_path / "two")], capsys)
    assert code == 2 and "--sequential" in err
