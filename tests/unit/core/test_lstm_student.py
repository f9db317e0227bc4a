"""BiLSTM student: shapes, padding invariance, HF round trip, PCA embedding init, gradients,
export."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModel

from distill.core.export import SentenceEncoder, export_student, load_encoder
from distill.core.losses import masked_mean_pool
from distill.core.lstm_student import (
    BiLSTMConfig,
    BiLSTMModel,
    build_lstm_student,
    pca_projection,
    register_lstm_student,
)

EMB, HIDDEN, LAYERS = 16, 8, 2


@pytest.fixture
def lstm(tiny_bert) -> BiLSTMModel:
    return build_lstm_student(
        tiny_bert, embedding_dim=EMB, hidden=HIDDEN, layers=LAYERS, seed=1
    ).eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, 99, (4, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 2:] = 0
    mask[3, :] = 0  # a row with no real token
    return ids * mask, mask  # pad id 0


def test_shapes_and_config_widths(lstm):
    ids, mask = _batch()
    out = lstm(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert lstm.config.hidden_size == 2 * HIDDEN and lstm.config.num_hidden_layers == LAYERS
    assert out.last_hidden_state.shape == (4, 9, 2 * HIDDEN)
    assert out.pooler_output.shape == (4, 2 * HIDDEN)
    assert [tuple(h.shape) for h in out.hidden_states] == [(4, 9, EMB)] + [(4, 9, 2 * HIDDEN)] * 2
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
    assert lstm(input_ids=ids, attention_mask=mask).hidden_states is None
    assert (out.last_hidden_state[mask == 0] == 0).all()
    assert (out.pooler_output[3] == 0).all()
    torch.testing.assert_close(
        out.pooler_output, masked_mean_pool(out.last_hidden_state, mask), atol=1e-6, rtol=0
    )


def test_tuple_output(lstm):
    ids, mask = _batch()
    last, pooled = lstm(input_ids=ids, attention_mask=mask, return_dict=False)
    assert last.shape == (4, 9, 2 * HIDDEN) and pooled.shape == (4, 2 * HIDDEN)


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_padding_never_changes_real_token_outputs(tiny_bert, pooling):
    model = build_lstm_student(
        tiny_bert, embedding_dim=EMB, hidden=HIDDEN, layers=LAYERS, pooling=pooling
    ).eval()
    ids, mask = _batch()
    base = model(input_ids=ids, attention_mask=mask)
    # Other pad ids and twice as much padding: real tokens, pooled vectors unchanged.
    noisy = torch.where(mask.bool(), ids, torch.randint(0, 99, ids.shape))
    longer_ids = torch.cat([noisy, torch.randint(0, 99, ids.shape)], dim=1)
    longer_mask = torch.cat([mask, torch.zeros_like(mask)], dim=1)
    other = model(input_ids=longer_ids, attention_mask=longer_mask)
    real = mask.bool()
    torch.testing.assert_close(
        other.last_hidden_state[:, :9][real], base.last_hidden_state[real], atol=1e-6, rtol=0
    )
    torch.testing.assert_close(other.pooler_output, base.pooler_output, atol=1e-6, rtol=0)
    # A sentence alone (no padding) gives the same states as in the padded batch.
    alone = model(input_ids=ids[1:2, :6], attention_mask=mask[1:2, :6])
    torch.testing.assert_close(
        alone.last_hidden_state[0], base.last_hidden_state[1, :6], atol=1e-6, rtol=0
    )


def test_left_padding_is_refused(lstm):
    ids, mask = _batch()
    with pytest.raises(ValueError, match="right-padded"):
        lstm(input_ids=ids, attention_mask=mask.flip(1))


def test_inputs_embeds_match_input_ids(lstm):
    ids, mask = _batch()
    by_ids = lstm(input_ids=ids, attention_mask=mask).last_hidden_state
    embeds = lstm.get_input_embeddings()(ids)
    by_embeds = lstm(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(by_embeds, by_ids, atol=0, rtol=0)
    with pytest.raises(ValueError, match="exactly one"):
        lstm(input_ids=ids, inputs_embeds=embeds)


def test_save_load_round_trip_through_auto_model(tmp_path, lstm):
    register_lstm_student()
    register_lstm_student()  # idempotent
    lstm.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).hidden_size == 2 * HIDDEN
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, BiLSTMModel)
    ids, mask = _batch()
    a = lstm(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    b = reloaded(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert all(torch.equal(x, y) for x, y in zip(a.hidden_states, b.hidden_states))


def test_embedding_init_is_the_pca_projection_of_the_teacher_table(tiny_bert, lstm):
    table = tiny_bert.embeddings.word_embeddings.weight.double()
    centred = table - table.mean(0)
    # Independent reference: eigenvectors of the covariance, largest eigenvalues first.
    eigvals, eigvecs = torch.linalg.eigh(centred.T @ centred)
    top = eigvecs[:, eigvals.argsort(descending=True)[:EMB]]
    reference = centred @ top
    ours = lstm.embeddings.weight.double()
    signs = (ours * reference).sum(0).sign()  # eigenvectors are defined up to sign
    torch.testing.assert_close(ours, reference * signs, atol=1e-5, rtol=0)
    projected, components = pca_projection(tiny_bert.embeddings.word_embeddings.weight, EMB)
    assert torch.equal(lstm.embeddings.weight, projected) and components.shape == (EMB, 32)
    assert torch.equal(
        projected, pca_projection(tiny_bert.embeddings.word_embeddings.weight, EMB)[0]
    )


def test_random_embedding_init_and_bad_names(tiny_bert, lstm):
    rand = build_lstm_student(
        tiny_bert, embedding_dim=EMB, hidden=HIDDEN, layers=1, init_embeddings="random"
    )
    assert not torch.allclose(rand.embeddings.weight, lstm.embeddings.weight)
    with pytest.raises(ValueError, match="student.init_embeddings: unknown 'glove'"):
        build_lstm_student(
            tiny_bert, embedding_dim=EMB, hidden=8, layers=1, init_embeddings="glove"
        )
    with pytest.raises(ValueError, match="student.embedding_dim"):
        build_lstm_student(tiny_bert, embedding_dim=64, hidden=8, layers=1)
    with pytest.raises(ValueError, match="student.pooling"):
        BiLSTMConfig(pooling="cls")


def test_build_is_reproducible_and_leaves_the_global_rng(tiny_bert):
    state = torch.get_rng_state()
    a, b = (
        build_lstm_student(tiny_bert, embedding_dim=EMB, hidden=HIDDEN, layers=LAYERS, seed=3)
        for _ in range(2)
    )
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_gradients_reach_every_parameter(lstm):
    lstm.train()
    ids, mask = _batch()
    out = lstm(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    masked_mean_pool(out.last_hidden_state, mask).pow(2).sum().backward()
    for name, p in lstm.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # The pad token (id 0) only ever sits at padding: its embedding gets no gradient.
    assert (lstm.embeddings.weight.grad[0] == 0).all()


# --- export --------------------------------------------------------------------------------

TEXTS = ["the cat sat on the mat", "a very good movie", "not bad", "zebra quux dog"]


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_export_reloads_to_the_same_embeddings(tmp_path, tiny_bert, tiny_tokenizer, pooling):
    student = build_lstm_student(
        tiny_bert, embedding_dim=EMB, hidden=HIDDEN, layers=LAYERS, pooling=pooling
    ).eval()
    with torch.random.fork_rng():
        torch.manual_seed(5)
        projection = torch.nn.Linear(2 * HIDDEN, 32)
    st_teacher = tmp_path / "teacher"
    st_teacher.mkdir()
    (st_teacher / "modules.json").write_text("[]")
    out = export_student(
        student,
        tiny_tokenizer,
        tmp_path / "export",
        projection=projection,
        sentence_transformer_teacher=st_teacher,
    )
    # A plain HF folder + our projection: no sentence-transformers modules for an LSTM.
    assert not (out / "modules.json").exists() and (out / "2_Dense" / "config.json").is_file()
    expected = SentenceEncoder(student, tiny_tokenizer, projection).encode(TEXTS)
    assert expected.shape == (len(TEXTS), 32)
    loaded = load_encoder(out)
    assert isinstance(loaded.model, BiLSTMModel) and loaded.model.config.pooling == pooling
    torch.testing.assert_close(loaded.encode(TEXTS), expected, atol=1e-6, rtol=0)
    batch = tiny_tokenizer(TEXTS, padding=True, return_tensors="pt")
    pooled = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    torch.testing.assert_close(expected, projection(pooled.pooler_output), atol=1e-6, rtol=0)
