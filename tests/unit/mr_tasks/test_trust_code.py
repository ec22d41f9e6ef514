"""A catalog written by others cannot run code: a manifest's model spec names a registered
factory (built-in or an installed entry point); anything else is refused by the drivers and
by the tasks themselves unless the caller trusts code for this one invocation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import modelshard
from modelshard.catalog.catalog import Catalog
from modelshard.cli import main
from modelshard.errors import ModelShardError, UsageError
from modelshard.jobs.config import parse_job_xml, render_job_xml
from modelshard.jobs.launch import run_job
from modelshard.jobs.modelio import SPEC_ATTR, load_model
from modelshard.jobs.models import ENTRY_POINT_GROUP, ModelSpec, build, mlp
from modelshard.jobs.predict.driver import predict
from modelshard.jobs.train.driver import init_model, train
from mr_tasks.mr_predict import MRPredict

SIZES = [64, 16, 10]
REGISTER_HINT = f"register it as an entry point of group '{ENTRY_POINT_GROUP}'"


def unregistered_net(*, sizes: list[int]) -> torch.nn.Module:
    """A harmless factory that is not registered: only --trust-code may build it."""
    return mlp(sizes=sizes)


def push_with_spec(cat: str, name: str, spec: dict) -> str:
    state = {k: v.detach().numpy() for k, v in mlp(sizes=SIZES).state_dict().items()}
    return f"{name}@" + modelshard.push(state, name, catalog=cat, attrs={SPEC_ATTR: json.dumps(spec)}).version


@pytest.fixture
def hostile(tmp_path):
    """A version whose spec would touch a file if anything imported and called it."""
    marker = tmp_path / "pwned"
    spec = {"factory": "subprocess:getoutput", "kwargs": {"cmd": f"touch {marker}"}}
    return push_with_spec(str(tmp_path / "cat"), "evil", spec), str(tmp_path / "cat"), marker


@pytest.fixture
def records(tmp_path, digit_rows):
    x, _ = digit_rows
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": i, "x": x[i].tolist(), "y": 1}) + "\n" for i in range(8)))
    return str(path)


def test_builtins_by_name_and_by_their_old_import_path():
    assert isinstance(build(ModelSpec("mlp", {"sizes": [3, 2]})), torch.nn.Sequential)
    assert isinstance(build(ModelSpec("modelshard.jobs.models:mlp", {"sizes": [3, 2]})), torch.nn.Sequential)


@pytest.mark.parametrize("name", ["subprocess:getoutput", "os:system", "nope.module:f", "", "mlp2"])
def test_unregistered_factories_are_refused_with_the_way_to_register(name):
    with pytest.raises(UsageError, match=f"is not registered: {REGISTER_HINT}.*--trust-code"):
        build(ModelSpec(name, {"cmd": "true"}))


def test_trusted_code_imports_what_the_spec_names_and_checks_it_is_a_module():
    assert isinstance(build(ModelSpec("torch.nn:Identity"), trust_code=True), torch.nn.Identity)
    with pytest.raises(UsageError, match="returned a dict, not a torch.nn.Module"):
        build(ModelSpec("builtins:dict"), trust_code=True)
    with pytest.raises(UsageError, match="cannot be imported"):
        build(ModelSpec("nope.module:f"), trust_code=True)


def test_entry_points_of_installed_packages_are_registered(tmp_path, monkeypatch):
    dist = tmp_path / "site" / "acme_models-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-models\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nident = torch.nn:Identity\n"
                                           "broken = acme_missing.models:net\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert isinstance(build(ModelSpec("ident")), torch.nn.Identity)
    assert isinstance(build(ModelSpec("torch.nn:Identity")), torch.nn.Identity)  # its value, too
    with pytest.raises(UsageError, match="entry point acme_missing.models:net .* cannot be loaded"):
        build(ModelSpec("broken"))


@pytest.mark.parametrize("text", ['{"factory": 1}', "[]", '{"factory": "mlp", "kwargs": [1]}', "[" * 100000])
def test_malformed_specs_are_usage_errors(text):
    with pytest.raises(UsageError):
        ModelSpec.parse(text)


@pytest.mark.parametrize("command", ["predict", "train"])
def test_the_cli_refuses_a_hostile_manifest_and_runs_nothing(hostile, records, tmp_path, capsys, command):
    key, cat, marker = hostile
    extra = [str(tmp_path / "out")] if command == "predict" else ["--epochs", "1"]
    rc = main([command, key, records, *extra, "--runner", "inline", "--catalog", cat])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith(f"modelshard {command}: error: model factory 'subprocess:getoutput' is not registered")
    assert not marker.exists() and not (tmp_path / "out").exists()
    assert modelshard.ls("evil", catalog=cat)[-1].version == "1"  # no epoch was committed


def test_the_python_api_refuses_too(hostile, records, tmp_path):
    key, cat, marker = hostile
    with pytest.raises(UsageError, match="not registered"):
        predict(key, records, str(tmp_path / "out"), catalog=cat)
    with pytest.raises(UsageError, match="not registered"):
        train(key, records, epochs=1, catalog=cat)
    with pytest.raises(UsageError, match="not registered"):
        load_model(cat, key)
    with pytest.raises(UsageError, match="not registered"):
        init_model(Catalog(cat), "new", ModelSpec("subprocess:getoutput", {"cmd": f"touch {marker}"}))
    assert not marker.exists()


@pytest.mark.parametrize("trust", [False, True])
def test_tasks_check_the_trust_property_themselves(tmp_path, records, trust):
    """The driver is bypassed: a job whose jobconf does not say trust_code=true must fail in
    its task; with it, the task builds the unregistered factory and predicts."""
    cat = str(tmp_path / "cat")
    key = push_with_spec(cat, "net", {"factory": f"{__name__}:unregistered_net", "kwargs": {"sizes": SIZES}})
    xml = render_job_xml("predict", job_name="p", num_maps=1, num_reduces=0, catalog=cat, model=key,
                         input=records, output=str(tmp_path / "out"), trust_code=trust)
    assert parse_job_xml(xml)["modelshard.trust_code"] == ("true" if trust else "false")

    def run() -> list:
        return run_job(MRPredict, runner="inline", inputs=[records], output_dir=str(tmp_path / "out"),
                       jobconf=parse_job_xml(xml), catalog=cat).output

    if not trust:
        with pytest.raises(ModelShardError, match="not registered"):
            run()
    else:
        run()
        predictions = [line for p in sorted((tmp_path / "out").glob("part-*")) for line in p.read_text().splitlines()]
        assert len(predictions) == 8


def test_trust_code_runs_an_unregistered_factory_end_to_end(tmp_path, records):
    cat = str(tmp_path / "cat")
    key = push_with_spec(cat, "net", {"factory": f"{__name__}:unregistered_net", "kwargs": {"sizes": SIZES}})
    r = predict(key, records, str(tmp_path / "out"), catalog=cat, trust_code=True)
    assert r.records == 8 and r.bad_records == 0
    assert train(key, records, epochs=1, catalog=cat, trust_code=True, ).epochs[0].version == "2"
    assert np.isfinite(modelshard.pull("net@2", catalog=cat)["0.weight"]).all()


class Exploding(torch.nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom in forward")


def exploding() -> torch.nn.Module:
    return Exploding(64, 10)


@pytest.mark.parametrize("runner", ["inline", "local"])
def test_a_failing_task_is_one_line_on_either_runner(tmp_path, records, capsys, runner, monkeypatch):
    # The local runner's tasks are processes of their own: they import the factory's module
    # from the checkout as the submitter does.
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[3]))
    cat = str(tmp_path / "cat")
    state = {k: v.detach().numpy() for k, v in exploding().state_dict().items()}
    key = "x@" + modelshard.push(state, "x", catalog=cat, attrs={
        SPEC_ATTR: json.dumps({"factory": f"{__name__}:exploding"})}).version
    rc = main(["predict", key, records, str(tmp_path / "out"), "--runner", runner, "--catalog", cat, "--trust-code"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1, err
    assert err.startswith(f"modelshard predict: error: MRPredict failed on the {runner} runner: ")
    assert "RuntimeError: boom in forward" in err
