"""The smoke job on mrjob's inline and local runners, reading a local file."""

import pytest

from tests.jobs.smoke import EXPECTED, TEXT, run_smoke


@pytest.mark.parametrize("runner", ["inline", "local"])
def test_smoke_job(tmp_path, runner):
    src = tmp_path / "input.txt"
    src.write_text(TEXT)
    counts, app_id = run_smoke(runner, str(src))
    assert counts == EXPECTED
    assert app_id is None
