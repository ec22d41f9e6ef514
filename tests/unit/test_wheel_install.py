"""A built wheel, installed outside the checkout, works: the job templates and the code that
tasks get come from the installed package, not from paths of the source checkout."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import modelshard, mr_tasks
from modelshard.jobs.config import parse_job_xml, render_job_xml
from modelshard.jobs.environment import collect_code
xml = render_job_xml("reshard", job_name="j", num_maps=1, num_reduces=0, catalog="hdfs:///c", model="m@1",
                     input="", output="", shard_size=1 << 20, dtype="", staging="hdfs:///s")
print(parse_job_xml(xml)["mapreduce.job.name"])
print(modelshard.__file__)
print(sorted({str(p.parent) for n, p in collect_code().files.items() if n.startswith(("modelshard/", "mr_tasks/"))})[0])
"""


def test_a_wheel_installed_elsewhere_needs_no_checkout(tmp_path):
    src = tmp_path / "src"  # a copy, so that the build leaves nothing in the checkout
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".hadoop", ".run", "build", "*.egg-info", "__pycache__", "tests", "bench"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("modelshard-*.whl")
    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                                str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    assert (site / "modelshard" / "jobs" / "templates" / "reshard_config.xml.j2").is_file()
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    name, init, code_dir = out.stdout.split()
    assert name == "j"
    assert init == str(site / "modelshard" / "__init__.py")
    assert code_dir.startswith(str(site))
