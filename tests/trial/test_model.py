"""Models: tiny random-init configs of many families with the builtin tokenizer; each pooling; the layer
count through each family's own field; pad tokens for decoders; label names in the model config."""

from __future__ import annotations

import pytest
import torch

from lbsearch.data.tokenizer import load_tokenizer, pad_token_id
from lbsearch.spec.config import ModelConfig, SpecError
from lbsearch.trial.batching import pad
from lbsearch.trial.model import PooledClassifier, build_model, uses_token_types

TINY = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}
FAMILIES = ["bert", "roberta", "distilbert", "electra", "deberta-v2", "modernbert", "gpt2", "llama"]
LAYERS = {"distilbert": "n_layers", "gpt2": "n_layer"}  # where the family keeps its layer count


@pytest.fixture(scope="module")
def batch():
    tok = load_tokenizer(ModelConfig())
    ids = [torch.tensor(x).numpy() for x in tok(["a short review", "a much longer review that goes on and on"])["input_ids"]]
    return pad(ids, tok.pad_token_id, "cpu")


@pytest.mark.parametrize("pooling", ["cls", "mean", "last"])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_and_pooling_builds_trains_and_names_its_labels(family, pooling, batch):
    torch.manual_seed(0)
    cfg = ModelConfig(source="random", model_type=family, pooling=pooling, num_layers=2, config=TINY)
    model = build_model(cfg, "single_label", ["rotten", "fresh", "mixed"], vocab_size=30522, pad_id=0)
    assert isinstance(model, PooledClassifier) == (pooling != "cls")
    config = model.config
    assert config.num_hidden_layers == 2 and getattr(config, LAYERS.get(family, "num_hidden_layers")) == 2  # num_layers wins over config
    assert config.id2label == {0: "rotten", 1: "fresh", 2: "mixed"} and config.label2id["fresh"] == 1
    assert config.pad_token_id == 0
    logits = model(**batch).logits
    assert logits.shape == (2, 3)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)  # nothing trainable is left unused


def test_last_token_pooling_reads_the_last_real_token_not_padding(batch):
    torch.manual_seed(0)
    model = build_model(ModelConfig(source="random", model_type="gpt2", pooling="last", config=TINY), "regression", ["y"], 30522, 0).eval()
    alone = {k: v[:1, : int(batch["attention_mask"][0].sum())] for k, v in batch.items()}
    assert model(**alone).logits[0].tolist() == pytest.approx(model(**batch).logits[0].tolist(), abs=1e-5)
    assert model.config.problem_type == "regression" and model.config.num_labels == 1


def test_pretrained_builtin_with_fewer_layers_and_multi_label_head():
    model = build_model(ModelConfig(num_layers=1, pooling="mean"), "multi_label", ["a", "b"], 30522, 0)
    assert model.config.num_hidden_layers == 1 and len(model.encoder.encoder.layer) == 1
    assert model.config.problem_type == "multi_label_classification"


def test_pad_token_from_the_tokenizer_its_eos_or_the_spec(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"[UNK]": 0, "good": 1, "bad": 2, "</s>": 3}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]").save_pretrained(tmp_path / "plain")
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]", eos_token="</s>").save_pretrained(tmp_path / "eos")
    assert pad_token_id(load_tokenizer(ModelConfig()), ModelConfig()) == 0  # MiniLM's [PAD]
    cfg = ModelConfig(source="random", tokenizer=str(tmp_path / "eos"), config=TINY)
    assert pad_token_id(load_tokenizer(cfg), cfg) == 3  # GPT-2 style: pad with eos
    cfg = ModelConfig(source="random", model_type="gpt2", tokenizer=str(tmp_path / "plain"), config=TINY)
    with pytest.raises(SpecError, match=r"no pad token and no eos token to pad with: set `model.pad_token` to one of its tokens") as err:
        pad_token_id(load_tokenizer(cfg), cfg)
    assert err.value.field == "model.tokenizer"
    cfg = cfg.model_copy(update={"pad_token": "[UNK]"})
    assert pad_token_id(load_tokenizer(cfg), cfg) == 0
    with pytest.raises(SpecError, match="'<pad>' is not in the tokenizer's vocabulary"):
        pad_token_id(load_tokenizer(cfg), cfg.model_copy(update={"pad_token": "<pad>"}))


@pytest.mark.parametrize("family,segments", [("bert", True), ("electra", True), ("roberta", True), ("deberta-v2", False), ("distilbert", False), ("gpt2", False)])
def test_segment_ids_of_pairs_go_to_the_families_that_embed_them(family, segments):
    torch.manual_seed(0)
    ids = [torch.tensor([101, 7, 8, 102, 9, 102]).numpy(), torch.tensor([101, 7, 102, 9, 102]).numpy()]
    types = [torch.tensor([0, 0, 0, 0, 1, 1]).numpy(), torch.tensor([0, 0, 0, 1, 1]).numpy()]
    for pooling in ("cls", "mean"):
        model = build_model(ModelConfig(source="random", model_type=family, pooling=pooling, config=TINY), "single_label", ["a", "b"], 30522, 0)
        assert uses_token_types(model) is segments
        batch = pad(ids, 0, "cpu", types if uses_token_types(model) else None)
        assert ("token_type_ids" in batch) is segments and batch.get("token_type_ids", torch.zeros(1)).max() <= 1
        assert model(**batch).logits.shape == (2, 2)


def test_a_saved_model_keeps_its_label_names_and_another_task_gets_a_new_head(tmp_path):
    """What a kept model holds: the original label names as id2label / label2id in its config."""
    from transformers import AutoConfig

    model = build_model(ModelConfig(source="random", pooling="cls", config=TINY), "single_label", ["1", "2"], 30522, 0)
    model.save_pretrained(tmp_path / "kept")  # cls: the architecture's own head, a transformers model
    saved = AutoConfig.from_pretrained(tmp_path / "kept")
    assert saved.id2label == {0: "1", 1: "2"} and saved.label2id == {"1": 0, "2": 1}
    again = build_model(ModelConfig(source=str(tmp_path / "kept"), pooling="cls"), "single_label", ["neg", "neu", "pos"], 30522, 0)
    assert again.config.id2label == {0: "neg", 1: "neu", 2: "pos"} and again.classifier.weight.shape[0] == 3


def test_predictions_read_as_the_task_reads_them():
    """What ``lbsearch predict`` prints for each task: the class, the classes over the threshold, the value in label units."""
    import torch

    from lbsearch.trial.model import _read_out

    names = {0: "a", 1: "b", 2: "c"}
    single = _read_out(torch.tensor([[0.0, 2.0, 0.0]]), names, {"task": "single_label"})
    assert single[0][0] == "b" and single[0][1] == pytest.approx(torch.tensor([0.0, 2.0, 0.0]).softmax(0)[1].item())
    multi = _read_out(torch.tensor([[3.0, -3.0, 0.5], [-3.0, -3.0, -3.0]]), names, {"task": "multi_label", "threshold": 0.6})
    assert [m[0] for m in multi] == ["a,c", "-"]
    reg = _read_out(torch.tensor([[0.5], [-1.0]]), {0: "y"}, {"task": "regression", "labels": {"shift": 10.0, "scale": 2.0}})
    assert [r[1] for r in reg] == [11.0, 8.0]


def test_gradient_checkpointing_on_a_family_without_it_is_a_spec_error_naming_the_field():
    cfg = ModelConfig(source="random", model_type="albert", pooling="cls", gradient_checkpointing=True, config=TINY | {"embedding_size": 32})
    with pytest.raises(SpecError, match="AlbertForSequenceClassification does not support it") as err:
        build_model(cfg, "single_label", ["a", "b"], 30522, 0)
    assert err.value.field == "model.gradient_checkpointing"
