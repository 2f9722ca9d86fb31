"""``python -m sed.embed`` refuses, in one logged line, what it cannot extract: a model without an encoder, an
encoder without a cache folder, an encoder that is fine-tuned. (Its extraction, read back by a train.py run:
tests/training/test_encoder_training.py.)"""

from __future__ import annotations

import logging

import pytest
from conftest import tiny_overrides

from sed.embed import main

TINY_BEATS = (
    "{encoder_layers:1,encoder_embed_dim:16,encoder_ffn_embed_dim:32,embed_dim:16,"
    "encoder_attention_heads:2,conv_pos:8,conv_pos_groups:4}"
)


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "model._target_=sed.models.crnn.CRNN: this model has no pretrained audio encoder"),
        (
            ["model=crnn_beats", "model.encoder.path=null", f"model.encoder.config={TINY_BEATS}"],
            "model.encoder.cache_dir is null: give the folder to keep the embeddings in",
        ),
        (
            [
                "model=crnn_beats",
                "model.encoder.path=null",
                f"model.encoder.config={TINY_BEATS}",
                "model.encoder.cache_dir={tmp}/unused",
                "model.encoder.frozen=false",
            ],
            "model.encoder.frozen=false: a fine-tuned encoder's embeddings change at every step",
        ),
    ],
)
def test_what_cannot_be_extracted_is_one_line(tiny_dataset, tmp_path, caplog, extra, message) -> None:
    with caplog.at_level(logging.ERROR, logger="sed.embed"):
        assert (
            main([*tiny_overrides(tiny_dataset, tmp_path / "exp"), *(e.replace("{tmp}", str(tmp_path)) for e in extra)])
            == 1
        )
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR][-1].startswith(message)
    assert not (tmp_path / "unused").exists()  # nothing claimed
