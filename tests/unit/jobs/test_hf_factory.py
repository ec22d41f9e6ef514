"""Your own architectures: ``push --model FACTORY[:KWARGS]`` records the factory; the built-in
``transformers`` factory builds a Hugging Face model from the version's own config.json (never
a hub, never custom code) and modelshard loads its weights; a version with a config.json and
no factory gets that one."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from modelshard import api
from modelshard.catalog.catalog import Catalog
from modelshard.cli import main
from modelshard.errors import UsageError
from modelshard.jobs.modelio import load_model, model_spec
from modelshard.jobs.models import SPEC_ATTR, ModelSpec
from tests.hf_data import SENTENCES, tiny_bert


@pytest.mark.parametrize(("text", "factory", "kwargs"), [
    ("mlp:64,16,10", "mlp", {"sizes": [64, 16, 10]}),
    ("transformers", "transformers", {}),
    ("transformers:head=sequence-classification,dtype=bfloat16", "transformers",
     {"head": "sequence-classification", "dtype": "bfloat16"}),
    ('transformers:{"head": "base"}', "transformers", {"head": "base"}),
    ('{"factory": "mynet", "kwargs": {"width": 3}}', "mynet", {"width": 3}),
    ("mypkg.models:net", "mypkg.models:net", {}),
    ("mypkg.models:net:width=3", "mypkg.models:net", {"width": 3}),
])
def test_spec_on_the_command_line(text, factory, kwargs):
    assert ModelSpec.from_text(text) == ModelSpec(factory, kwargs)


def inputs(folder):
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    return tok(SENTENCES, padding=True, return_tensors="pt")


def test_a_folder_with_config_json_is_built_by_the_transformers_factory(tmp_path):
    folder = tiny_bert(tmp_path / "bert")
    cat = Catalog(str(tmp_path / "cat"))
    api.push(folder, "bert", catalog=cat)
    assert model_spec(cat, "bert") == ModelSpec("transformers")  # no factory given: config.json
    model = load_model(cat.uri, "bert")
    assert type(model).__name__ == "BertForSequenceClassification"
    ref = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        got, want = model(**inputs(folder)).logits, ref(**inputs(folder)).logits
    assert torch.equal(got, want)


def test_push_model_sets_the_factory_and_its_head(tmp_path, capsys):
    folder = tiny_bert(tmp_path / "bert")
    cat = str(tmp_path / "cat")
    assert main(["push", str(folder), "bert", "--model", "transformers:head=base", "--catalog", cat]) == 0
    spec = json.loads(api.show("bert", catalog=cat).manifest.attrs[SPEC_ATTR])
    assert spec == {"factory": "transformers", "kwargs": {"head": "base"}}
    model = load_model(cat, "bert")  # the classifier's weights are left out of the base model
    assert type(model).__name__ == "BertModel"
    ref = transformers.AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        assert torch.equal(model(**inputs(folder)).last_hidden_state,
                           ref(**inputs(folder)).last_hidden_state)
    capsys.readouterr()
    assert main(["push", str(folder), "bert", "--model", "nosuch", "--catalog", cat]) == 2
    assert "model factory 'nosuch' is not registered" in capsys.readouterr().err
    assert main(["push", str(folder), "bert", "--model", "json:loads", "--catalog", cat]) == 2


def test_weights_that_do_not_fit_the_head_are_refused(tmp_path):
    folder = tiny_bert(tmp_path / "bert", head="base")
    cat = str(tmp_path / "cat")
    api.push(folder, "bert", catalog=cat,
             attrs={SPEC_ATTR: ModelSpec("transformers", {"head": "sequence-classification"}).dumps()})
    with pytest.raises(UsageError, match="missing, e.g. classifier"):
        load_model(cat, "bert")


def test_config_json_never_brings_code(tmp_path):
    folder = tiny_bert(tmp_path / "bert")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "evil--modeling_evil.Evil"}
    (folder / "config.json").write_text(json.dumps(config))
    cat = str(tmp_path / "cat")
    api.push(folder, "bert", catalog=cat)
    assert type(load_model(cat, "bert")).__module__.startswith("transformers.models.bert")
    config["model_type"] = "evil"
    (folder / "config.json").write_text(json.dumps(config))
    api.push(folder, "evil", catalog=cat)
    with pytest.raises(UsageError, match="model_type 'evil' is not an architecture"):
        load_model(cat, "evil")


def test_a_version_without_factory_or_config_says_what_to_do(tmp_path):
    cat = Catalog(str(tmp_path / "cat"))
    api.push({"w": torch.ones(2)}, "plain", catalog=cat)
    with pytest.raises(UsageError, match="no model spec .* push it with --model FACTORY"):
        model_spec(cat, "plain")
