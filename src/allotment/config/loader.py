"""Load ``allotment.yaml`` and say exactly where it is wrong.

YAML is read with ruamel's round-trip loader, which remembers the line of every key, so that
both pydantic's errors and the whole-policy checks of ``rules`` can name file, line and key.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from allotment.config import rules
from allotment.config.models import Policy
from allotment.errors import ConfigError, ConfigProblem

__all__ = ["ENV_OVERRIDES", "load_policy", "parse_policy"]

#: Environment variables that override keys of ``service:``.
ENV_OVERRIDES = {
    "ALLOTMENT_DATA_DIR": "data_dir",
    "ALLOTMENT_DATABASE_URL": "database_url",
    "ALLOTMENT_INSTALLATION": "installation",
    "JUPYTERHUB_SERVICE_PREFIX": "base_url",
    "ALLOTMENT_BASE_URL": "base_url",
    "JUPYTERHUB_API_URL": "hub_api_url",
    "ALLOTMENT_HUB_API_URL": "hub_api_url",
    "ALLOTMENT_MAX_REQUEST_BODY": "max_request_body",
}


def load_policy(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Policy:
    """Read, validate and check a policy file; raise ``ConfigError`` listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            [ConfigProblem(str(path), 0, "", "no such file", "check the path.")]
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([ConfigProblem(str(path), 0, "", f"cannot read it: {e}")]) from None
    return parse_policy(text, str(path), environ=environ)


def parse_policy(
    text: str, filename: str = "allotment.yaml", *, environ: Mapping[str, str] | None = None
) -> Policy:
    """Validate policy text; ``environ`` (default ``os.environ``) may override ``service``."""
    try:
        doc = YAML(typ="rt").load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 0
        what = " ".join(str(x) for x in (e.context, e.problem) if x)
        hint = "each key may appear once per mapping." if "duplicate key" in what else ""
        raise ConfigError(
            [ConfigProblem(filename, line, "", f"not valid YAML: {what}", hint)]
        ) from None
    except YAMLError as e:  # e.g. a control character, which the reader refuses before parsing
        first = str(e).splitlines()[0]
        raise ConfigError([ConfigProblem(filename, 0, "", f"not valid YAML: {first}")]) from None
    except RecursionError:
        raise ConfigError(
            [ConfigProblem(filename, 0, "", "not valid YAML: nested too deeply")]
        ) from None
    except ValueError as e:  # e.g. an integer of thousands of digits
        raise ConfigError([ConfigProblem(filename, 0, "", f"not valid YAML: {e}")]) from None
    if doc is None:
        raise ConfigError(
            [
                ConfigProblem(
                    filename, 0, "", "the file is empty", "start from examples/one-box.yaml."
                )
            ]
        )
    if not isinstance(doc, CommentedMap):
        raise ConfigError(
            [ConfigProblem(filename, 1, "", "the top level must be a mapping of sections")]
        )
    try:
        data = _plain(doc, [MAX_VALUES])
    except (RecursionError, _TooBig):
        raise ConfigError(
            [
                ConfigProblem(
                    filename,
                    0,
                    "",
                    f"the file holds more than {MAX_VALUES:,} values or nests too deeply "
                    "(YAML aliases that repeat a large part many times?)",
                    "write the policy out; a policy needs no aliases.",
                )
            ]
        ) from None
    env = os.environ if environ is None else environ
    raw_service = data.get("service", {})
    if isinstance(raw_service, dict):  # else pydantic reports the wrong type below
        service = dict(raw_service)
        for var, key in ENV_OVERRIDES.items():
            if env.get(var):
                service[key] = env[var]
        data["service"] = service
    try:
        policy = Policy.model_validate(data)
    except ValidationError as e:
        raise ConfigError([_problem(filename, doc, err) for err in e.errors()]) from None
    findings = rules.check(policy)
    if findings:
        raise ConfigError(
            [
                ConfigProblem(filename, _line(doc, f.loc), _key(f.loc), f.message, f.hint)
                for f in findings
            ]
        )
    return policy


#: Most values a policy may hold once its aliases are expanded (a few lines of aliases can
#: stand for billions of values).
MAX_VALUES = 1_000_000


class _TooBig(Exception):
    pass


def _plain(node: Any, budget: list[int]) -> Any:
    """Plain dicts and lists, spending ``budget[0]`` values (raises _TooBig past it)."""
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooBig
    if isinstance(node, CommentedMap):
        return {str(k): _plain(v, budget) for k, v in node.items()}
    if isinstance(node, CommentedSeq):
        return [_plain(v, budget) for v in node]
    return node


def _key(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line(doc: Any, loc: tuple[str | int, ...]) -> int:
    """1-based line of the deepest part of ``loc`` present in the document."""
    line = 1
    node = doc
    for part in loc:
        if isinstance(node, CommentedMap) and part in node:
            line = node.lc.key(part)[0] + 1
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
            line = node.lc.item(part)[0] + 1
            node = node[part]
        else:
            break
    return line


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model class that holds the last key of ``loc``, to suggest known keys."""
    model: Any = Policy
    for part in loc[:-1]:
        if isinstance(model, type) and issubclass(model, BaseModel):
            field = model.model_fields.get(str(part))
            if field is None:
                continue  # a dict key or list index between models
            model = _inner_model(field.annotation)
        else:
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _problem(filename: str, doc: Any, err: ErrorDetails) -> ConfigProblem:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
    line = _line(doc, loc)
    kind = err["type"]
    got = err.get("input")
    if kind == "extra_forbidden":
        model = _model_at(loc)
        known = sorted(model.model_fields) if model else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys here: {', '.join(known)}"
        return ConfigProblem(filename, line, _key(loc), "unknown key", hint)
    if kind == "missing":
        return ConfigProblem(filename, line, _key(loc), "required key is missing", "add it.")
    message = err["msg"][0].lower() + err["msg"][1:]
    message = message.replace("input should be", "must be")
    if kind == "value_error":
        message = message.removeprefix("value error, ")
    elif kind == "string_pattern_mismatch":
        message = f"'{got}' is not a valid name"
        return ConfigProblem(
            filename,
            line,
            _key(loc),
            message,
            "use lower-case letters, digits, '.', '_' and '-', starting with a letter or digit.",
        )
    elif got is not None and not isinstance(got, dict | list):
        message += f" (got {got!r})"
    return ConfigProblem(filename, line, _key(loc), message)
