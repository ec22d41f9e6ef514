import xml.etree.ElementTree as ET

import pytest

from modelshard.errors import UsageError
from modelshard.jobs.config import jobconf_args, parse_job_xml, render_job_xml

BASE = dict(job_name="j", num_maps=4, num_reduces=2, catalog="/c", model="m@1", input="/in", output="/out")


def test_train_config_has_the_seed_settings():
    props = parse_job_xml(render_job_xml("train", **BASE, epoch=3, lr=0.1, batch_size=32, staging="/s",
                                         splits=4, outer_lr=0.7, outer_momentum=0.9, shuffle_buffer_bytes=100,
                                         map_memory_mb=1024, io_sort_mb=32))
    assert props["mapreduce.job.name"] == "j"
    assert props["mapreduce.map.memory.mb"] == "1024"
    assert props["mapreduce.task.io.sort.mb"] == "32"
    assert props["mapreduce.job.reduces"] == "2"
    assert props["modelshard.model"] == "m@1"
    assert props["modelshard.train.epoch"] == "3"
    assert (props["modelshard.train.splits"], props["modelshard.train.outer_momentum"]) == ("4", "0.9")


@pytest.mark.parametrize(("job", "extra"), [("predict", {}), ("reshard", {"shard_size": 1 << 20, "staging": "/s"})])
def test_other_configs_render(job, extra):
    props = parse_job_xml(render_job_xml(job, **BASE, **extra))
    assert props["modelshard.input"] == "/in"


@pytest.mark.parametrize("job", ["train", "predict", "reshard"])
def test_unknown_variable_is_a_one_line_error_listing_the_known_ones(job):
    with pytest.raises(UsageError) as e:
        render_job_xml(job, **BASE, map_memmory_mb=1024)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"template {job}_config.xml.j2: unknown variable(s) map_memmory_mb; known: ")
    assert "map_memory_mb" in message and "trust_code" in message


def test_values_with_markup_still_give_valid_xml():
    xml = render_job_xml("predict", **{**BASE, "job_name": "a<b>&c\"'"})
    ET.fromstring(xml)
    assert parse_job_xml(xml)["mapreduce.job.name"] == "a<b>&c\"'"


def test_missing_variable_is_a_clear_error():
    with pytest.raises(UsageError, match="'num_maps' is undefined"):
        render_job_xml("predict", job_name="j")


def test_unknown_job():
    with pytest.raises(UsageError, match="unknown job 'fit'"):
        render_job_xml("fit", **BASE)


def test_user_overrides_win():
    args = jobconf_args({"mapreduce.job.reduces": "2", "a": "1"}, {"mapreduce.job.reduces": "5"})
    assert args == ["-D", "mapreduce.job.reduces=5", "-D", "a=1"]
