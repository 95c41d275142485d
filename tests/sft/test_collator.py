"""SFTCollator: one packed row whose loss is the token-weighted mean of the samples' own losses."""

from __future__ import annotations

import pickle

import pytest
import torch

from sage_fast.agent.samples import IGNORE_INDEX
from sage_fast.models import packed_attention as P
from sage_fast.sft.collator import SKIPPED_KEY, SFTCollator
from sage_fast.sft.dataset import PromptBuilder, SFTDataset


@pytest.fixture(scope="module")
def models(material):  # noqa: ANN001, ANN201
    from transformers import AutoModelForImageTextToText

    sdpa = AutoModelForImageTextToText.from_pretrained(material.folder, attn_implementation="sdpa",
                                                       dtype=torch.float32)
    packed = AutoModelForImageTextToText.from_pretrained(material.folder, attn_implementation=P.ATTN_NAME,
                                                         dtype=torch.float32)
    return sdpa, packed


def one_by_one(model, item) -> torch.Tensor:  # noqa: ANN001
    """The obviously right loss: one sample, its own batch, sdpa attention."""
    batch = {k: (v.unsqueeze(0) if k in ("input_ids", "labels", "mm_token_type_ids") else v) for k, v in item.items()}
    return model(**batch).loss


def test_packed_row_loss_is_the_token_mean_of_the_samples(material, models, make_stage2, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("SAGE_FAST_FORCE_IMPL", "reference")  # the per-segment path: fast on CPU (tests/kernels test the kernel)
    sdpa, packed = models
    records = [*material.episode, make_stage2("hand/a", '<json>{"final_answer": "a much longer answer, 12345"}</json>')]
    dataset = SFTDataset(records, PromptBuilder(material.folder))
    items = [dataset[i] for i in range(len(records))]
    targets = [int((item["labels"][1:] != IGNORE_INDEX).sum()) for item in items]
    assert len(set(targets)) > 1, "samples of different response lengths make the weighting matter"
    collator = SFTCollator(packed.config, dataset)
    row = collator([{"index": i} for i in range(len(records))])
    assert row["input_ids"].shape == (1, sum(item["input_ids"].numel() for item in items))
    assert row["position_ids"].shape == (4, 1, row["input_ids"].shape[1])
    assert row["cu_seq_lens_q"].tolist() == [0, *torch.tensor([i["input_ids"].numel() for i in items]).cumsum(0).tolist()]
    assert SKIPPED_KEY not in row
    with torch.no_grad():
        losses = torch.stack([one_by_one(sdpa, item) for item in items])
        want = (losses * torch.tensor(targets)).sum() / sum(targets)
        got = packed(**row).loss
        assert not torch.allclose(losses.mean(), want, atol=1e-4), "weighting must differ from a plain mean here"
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the same row from tokenized features, as a caller outside the trainer gives them
    torch.testing.assert_close(SFTCollator(packed)(items)["input_ids"], row["input_ids"])


def test_skipped_samples_are_dropped_and_counted(material, models, make_stage2) -> None:  # noqa: ANN001
    _, packed = models
    dataset = SFTDataset([make_stage2("hand/x"), make_stage2("hand/y")], PromptBuilder(material.folder))
    collator = SFTCollator(packed.config, dataset, count_skipped=True)
    one = dataset[0]
    row = collator([None, {"index": 1}, None])
    assert row[SKIPPED_KEY] == 2 and row["input_ids"].shape[1] == one["input_ids"].numel()
    empty = collator([None, None])  # every rank must still run a step: one token, nothing trained
    assert empty[SKIPPED_KEY] == 2 and empty["input_ids"].shape == (1, 1)
    assert bool((empty["labels"] == IGNORE_INDEX).all())
    del empty[SKIPPED_KEY]
    with torch.no_grad():
        assert torch.isfinite(packed(**empty).logits).all()


def test_collator_travels_to_workers_without_weights(material, models, make_stage2) -> None:  # noqa: ANN001
    _, packed = models
    dataset = SFTDataset([make_stage2()], PromptBuilder(material.folder))
    collator = SFTCollator(packed, dataset)
    first = collator([{"index": 0}])
    payload = pickle.dumps(collator)
    assert len(payload) < 200_000  # the tokenizer and config, not the model's weights
    again = pickle.loads(payload)([{"index": 0}])
    for key in first:
        assert torch.equal(torch.as_tensor(first[key]), torch.as_tensor(again[key])), key
    assert all(p.device.type == "meta" for p in collator.rope_model.parameters())


def test_collator_errors_name_the_problem(material, models) -> None:  # noqa: ANN001
    _, packed = models
    with pytest.raises(TypeError, match="PretrainedConfig"):
        SFTCollator(object())
    with pytest.raises(ValueError, match="no dataset"):
        SFTCollator(packed.config)([{"index": 0}])
    with pytest.raises(ValueError, match="tokenized sample"):
        SFTCollator(packed.config)([{"text": "hello"}])
    with pytest.raises(ValueError, match="no labels"):
        SFTCollator(packed.config)([{"input_ids": torch.tensor([1, 2, 3])}])
