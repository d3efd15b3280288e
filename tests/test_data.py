import json

import pytest

from safeedit.data import EVAL_KEYS, SafeEditValidationError, load_safeedit
from tests.conftest import THREE


def test_sample_counts(sample):
    stats = sample.stats()
    assert stats["records"] == 163
    assert len(stats["categories"]) == 9
    assert stats["distinct_questions"] == 60


def test_eval_inputs_have_the_five_keys(sample):
    inst = sample[0]
    inputs = inst.eval_inputs()
    assert tuple(inputs) == EVAL_KEYS
    assert inputs["DS"] == inst.adversarial_prompt
    assert inputs["DG_onlyQ"] == inst.question


def test_keys_are_unique_although_ids_repeat(sample):
    ids = [i.id for i in sample]
    assert len(set(ids)) < len(ids)  # the public sample repeats ids
    assert len({i.key for i in sample}) == len(sample)


def test_edit_only_records_load_and_say_so():
    data = load_safeedit(THREE)
    assert len(data) == 3 and data.edit_only_count == 3
    assert list(data[0].eval_inputs()) == ["DS"]


def test_round_trip_to_record(sample, tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps([i.to_record() for i in sample.instances[:5]]))
    again = load_safeedit(path)
    assert [i.eval_inputs() for i in again] == [i.eval_inputs() for i in sample.instances[:5]]


def test_validation_names_record_and_field(sample_path, tmp_path):
    records = json.loads(sample_path.read_text())
    del records[5]["safe generation"]
    records[7]["knowledge constrain"] = {"prompt": "x"}
    records[9]["generalization test"]["test input of other question input"] = 3
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(records))
    with pytest.raises(SafeEditValidationError) as err:
        load_safeedit(path)
    problems = err.value.problems
    assert [(p.position, p.field) for p in problems] == [
        (5, "safe generation"),
        (7, "knowledge constrain.answer"),
        (9, "generalization test.test input of other question input"),
    ]
    assert problems[0].record_id == records[5]["id"]
    lenient = load_safeedit(path, strict=False)
    assert len(lenient) == 160 and len(lenient.problems) == 3


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": 1}\n{not json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        load_safeedit(path)


def _write_splits(folder, sample):
    folder.mkdir()
    records = [i.to_record() for i in sample.instances]
    (folder / "SafeEdit_train.json").write_text(json.dumps(records[:10]))
    (folder / "SafeEdit_val.json").write_text(json.dumps(records[10:15]))
    (folder / "SafeEdit_test.json").write_text(json.dumps(records[15:18]))


def test_folder_of_split_files(sample, tmp_path):
    folder = tmp_path / "safeedit"
    _write_splits(folder, sample)
    assert len(load_safeedit(folder, split="train")) == 10
    assert len(load_safeedit(folder, split="validation")) == 5
    assert len(load_safeedit(folder)) == 18
    with pytest.raises(FileNotFoundError, match="no file for split"):
        load_safeedit(folder, split="holdout")


def test_dataset_id_path_through_datasets_library(sample, tmp_path):
    """A hub id goes through datasets.load_dataset; a local folder exercises the same code."""
    from safeedit.data.loaders import _hub_records, from_parts

    folder = tmp_path / "hub_like"
    folder.mkdir()
    records = [i.to_record() for i in sample.instances[:6]]
    with open(folder / "test.jsonl", "w") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    parts = _hub_records(str(folder), split="test")
    data = from_parts(parts)
    assert len(data) == 6
    assert [i.eval_inputs() for i in data] == [i.eval_inputs() for i in sample.instances[:6]]


def test_missing_file_is_clear():
    with pytest.raises(FileNotFoundError, match="not found"):
        load_safeedit("./nope.json")
