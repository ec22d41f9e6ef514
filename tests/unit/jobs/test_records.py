import numpy as np
import pytest

from modelshard.jobs.records import BadRecord, parse_record


@pytest.mark.parametrize("line,reason", [
    ("{not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"x": [1]}', "no id"),
    ('{"id": 1, "x": ["a"]}', "not all numbers"),
    ('{"id": 1, "x": []}', "non-empty"),
    ('{"id": 1, "x": [NaN, 1]}', "not JSON"),  # NaN is not JSON
    ('{"id": 1, "x": [1, 2], "y": 1.5}', "class index"),
    ('{"id": 1, "x": [1, 2, 3]}', "3 features; the model takes 2"),
])
def test_bad_jsonl_records_say_why(line, reason):
    with pytest.raises(BadRecord, match=reason):
        parse_record(line, "jsonl", n_features=2)


def test_csv_with_and_without_label():
    rid, x, y = parse_record("r9,4,0.5,1\n", "csv")
    assert (rid, y) == ("r9", 4) and np.array_equal(x, [0.5, 1.0])
    assert parse_record("r9,,0.5,1", "csv")[2] is None
    with pytest.raises(BadRecord, match="NaN or infinity"):
        parse_record("r9,,nan,1", "csv")
    with pytest.raises(BadRecord, match="CSV fields"):
        parse_record("r9,1", "csv")
