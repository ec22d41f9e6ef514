"""The smoke job runs on YARN, reading from and writing to HDFS."""

import re

from tests.jobs.smoke import EXPECTED, TEXT, run_smoke


def test_smoke_job_on_yarn(hdfs_root):
    fs, root = hdfs_root
    fs.write_bytes(f"{root}/input.txt", TEXT.encode())
    counts, app_id = run_smoke("hadoop", fs.uri(f"{root}/input.txt"), fs.uri(f"{root}/out"))
    assert counts == EXPECTED
    assert app_id and re.fullmatch(r"application_\d+_\d+", app_id)
    assert any(i.path.endswith("_SUCCESS") for i in fs.ls(f"{root}/out"))
