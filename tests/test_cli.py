import json

from safeedit.cli import main
from safeedit.commands.common import parse_indices


def test_stats_json(sample_path, capsys):
    assert main(["data", "stats", str(sample_path), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["records"] == 163 and len(stats["categories"]) == 9


def test_validate_ok_and_broken(sample_path, tmp_path, capsys):
    assert main(["data", "validate", str(sample_path)]) == 0
    records = json.loads(sample_path.read_text())
    del records[5]["safe generation"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(records))
    assert main(["data", "validate", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "record 5" in out and "safe generation" in out


def test_parse_indices():
    assert parse_indices("0,1,2") == [0, 1, 2]
    assert parse_indices("3-5,1") == [1, 3, 4, 5]
