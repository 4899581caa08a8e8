"""The dataset reader: labelled rows, question types, and rows it must refuse."""

import json

import pytest

from vtpexport.dataset import load_samples, read_dataset
from vtpexport.errors import UserError


def write_rows(folder, rows):
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_answer_and_type_are_optional(tmp_path, image_file):
    path = write_rows(
        tmp_path,
        [
            {"image": str(image_file), "question": "What colour?", "answer": "red", "type": "colour"},
            {"image": str(image_file), "question": "How many?"},
        ],
    )
    first, second = read_dataset(path)
    assert (first.answer, first.type) == ("red", "colour")
    assert (second.answer, second.type) == (None, None)
    samples = load_samples([first, second])
    assert samples.records == [first, second] and len(samples.images) == 2


@pytest.mark.parametrize(
    "row, pattern",
    [
        ({"question": "What?"}, r"data\.jsonl:2: expected a JSON object with 'image' and 'question' \(no 'image'\)"),
        ({"image": "a.png"}, r"data\.jsonl:2: .*\(no 'question'\)"),
        ({"image": "a.png", "question": "What?", "answer": 3}, r"data\.jsonl:2: 'answer' must be a text, got 3"),
        ({"image": "a.png", "question": "What?", "type": ["count"]}, r"data\.jsonl:2: 'type' must be a text"),
        ([1, 2], r"data\.jsonl:2: expected a JSON object"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, row, pattern):
    path = write_rows(tmp_path, [{"image": "a.png", "question": "Fine?"}, row])
    with pytest.raises(UserError, match=pattern):
        read_dataset(path)


def test_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"image": "a.png", "question": "Fine?"}\n{not json\n')
    with pytest.raises(UserError, match=r"data\.jsonl:2: not valid JSON"):
        read_dataset(path)
