"""Job XML configs: rendered from the Jinja templates in ``templates/`` (installed as
``modelshard/jobs/templates``) and handed to
Hadoop as ``-D`` properties (mrjob's jobconf), so memory, queue, reducers and job name come
from them, and ``-D key=value`` given by the user still wins.

>>> xml = render_job_xml("predict", job_name="p", num_maps=2, num_reduces=0, catalog="/c",
...                      model="m", input="/in", output="/out")
>>> parse_job_xml(xml)["mapreduce.job.name"]
'p'
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import jinja2
import jinja2.meta

from modelshard.errors import FormatError, UsageError

JOBS = ("train", "predict", "reshard")


def templates_dir() -> Path:
    """``$MODELSHARD_TEMPLATES``, else the templates installed with modelshard."""
    env = os.environ.get("MODELSHARD_TEMPLATES")
    return Path(env) if env else Path(__file__).resolve().parent / "templates"


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        autoescape=True,  # values such as a<b&c must still yield valid XML
        keep_trailing_newline=True,
    )


def template_variables(env: jinja2.Environment, name: str) -> set[str]:
    """Every variable that template ``name`` and the templates it extends or includes read."""
    source = env.loader.get_source(env, name)[0]
    ast = env.parse(source)
    found = set(jinja2.meta.find_undeclared_variables(ast))
    for parent in jinja2.meta.find_referenced_templates(ast):
        if parent is not None:
            found |= template_variables(env, parent)
    return found


def render_job_xml(job: str, **variables: object) -> str:
    """The job XML for ``job`` (train, predict or reshard), checked to parse. A variable that
    the template does not read is an error (a typo must not fall back to the default)."""
    if job not in JOBS:
        raise UsageError(f"unknown job {job!r}; use one of: {', '.join(JOBS)}")
    name = f"{job}_config.xml.j2"
    env = _environment()
    try:
        known = template_variables(env, name)
        if unknown := sorted(set(variables) - known):
            raise UsageError(f"template {name}: unknown variable(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        xml = env.get_template(name).render(**variables)
    except jinja2.UndefinedError as e:
        raise UsageError(f"template {name}: {e.message}; pass it as a job option") from e
    except jinja2.TemplateNotFound as e:
        raise UsageError(f"template {name} not found in {templates_dir()}; set MODELSHARD_TEMPLATES") from e
    parse_job_xml(xml, source=name)
    return xml


def parse_job_xml(xml: str, *, source: str = "job XML") -> dict[str, str]:
    """The ``name -> value`` properties of a Hadoop configuration document."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise FormatError(f"{source}: not valid XML ({e}); check the template") from e
    if root.tag != "configuration":
        raise FormatError(f"{source}: root element is <{root.tag}>, not <configuration>")
    props = {}
    for prop in root.iter("property"):
        name, value = prop.findtext("name"), prop.findtext("value")
        if not name:
            raise FormatError(f"{source}: a <property> has no <name>")
        props[name] = value or ""
    return props


def jobconf_args(props: dict[str, str], overrides: dict[str, str] | None = None) -> list[str]:
    """mrjob ``-D`` arguments: the rendered properties, then the user's overrides."""
    merged = {**props, **(overrides or {})}
    return [arg for k, v in merged.items() for arg in ("-D", f"{k}={v}")]
