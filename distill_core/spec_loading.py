"""A job spec from YAML and `--set key=value` overrides, and back.

`load_spec` reads the YAML (refusing a key written twice), merges the overrides, validates
against the schema (`distill_core/spec.py`); `dump_spec` writes the resolved spec with every
secret redacted; `explicit_fields` / `override_fields` say which fields the user set;
`map_spec_paths` rewrites the fields that name local files.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from distill.core.spec import JobSpec, SpecError, format_error


def parse_overrides(pairs: list[str]) -> dict:
    """`a.b=1` strings to a nested dict; values are parsed as YAML scalars/lists."""
    tree: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SpecError(f"--set {pair!r}: expected key=value")
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpecError(f"--set {key}: {part} is both a value and a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            raise SpecError(
                f"--set {key}: {raw!r} is not a YAML value (quote it in the shell)"
            ) from None
    return tree


def nested(dotted: str, value: Any) -> dict:
    """`a.b.c`, v -> {"a": {"b": {"c": v}}}."""
    tree: dict = {}
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return tree


def merge(base: dict, update: dict) -> dict:
    """Deep merge; `stages.1.training.steps=5` addresses list items by index."""
    out = dict(base)
    for key, value in update.items():
        current = out.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            out[key] = merge(current, value)
        elif (
            isinstance(value, dict)
            and isinstance(current, list)
            and all(k.isdigit() for k in value)
        ):
            items = list(current)
            for index, item in value.items():
                i = int(index)
                if i >= len(items):
                    raise SpecError(f"--set {key}.{index}: {key} has {len(items)} items")
                items[i] = merge(items[i], item) if isinstance(item, dict) else item
            out[key] = items
        else:
            out[key] = value
    return out


class DuplicateKey(yaml.YAMLError):
    """A mapping names one key twice (YAML lets the last silently win)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key written twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:  # the keys written here; `<<` merges may be overridden
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key, line = self.construct_object(key_node), key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKey(
                    f"key {key!r} appears twice in one mapping (lines {seen[key]} and {line})"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml_mapping(text: str, where: str) -> dict:
    """YAML text that must hold a mapping (empty: {}); `where` names it in the SpecError."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except DuplicateKey as exc:
        raise SpecError(f"{where}: {exc}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{where}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def read_yaml_mapping(path: str | Path, what: str) -> dict:
    """A YAML file holding a mapping; every way it can be unusable (missing, a folder, not
    readable, not UTF-8, not YAML, not a mapping) is one SpecError naming `what path`."""
    path = Path(path)
    where = f"{what} {path}"
    if path.is_dir():
        raise SpecError(f"{where}: is a folder, expected a YAML file")
    if not path.is_file():
        raise SpecError(f"{where}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{where}: not UTF-8 text") from None
    except OSError as exc:
        raise SpecError(f"{where}: cannot read it ({exc.strerror or type(exc).__name__})") from None
    return parse_yaml_mapping(text, where)


# The offline quickstart (no config): the defaults, scored on the packaged STS sample so its
# quality line is an STS Spearman. A generative teacher set by --set drops the sample (it
# is scored by perplexity; see GenerativeFamily.resolve_stage).
QUICKSTART = {"evaluation": {"sts_path": "builtin:sts-sample"}}


def load_spec(path: str | Path | None = None, overrides: list[str] | None = None) -> JobSpec:
    """Read YAML (or the quickstart's defaults when `path` is None), apply overrides,
    validate."""
    raw = read_yaml_mapping(path, "config") if path is not None else copy.deepcopy(QUICKSTART)
    return load_spec_dict(raw, overrides)


def load_spec_dict(raw: dict, overrides: list[str] | None = None) -> JobSpec:
    """Validate a spec given as a mapping (as the YAML would hold), after overrides."""
    if not isinstance(raw, dict):
        raise SpecError(f"config: expected a mapping, got {type(raw).__name__}")
    raw = merge(raw, parse_overrides(overrides or []))
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(format_error(err)) from None


def override_fields(overrides: list[str] | None) -> set[str]:
    """Dotted paths the `--set KEY=VALUE` overrides give: what `--smoke` must keep. A config
    file's own values are the example's defaults, which `--smoke` caps."""
    return explicit_fields(parse_overrides(overrides or []))


def explicit_fields(node: Any, prefix: str = "") -> set[str]:
    """Dotted paths of the fields given explicitly in a validated spec (pydantic's
    `model_fields_set`, recursively) or in a raw dict (e.g. parsed `--set` overrides)."""
    if isinstance(node, BaseModel):
        items = [(k, getattr(node, k)) for k in node.model_fields_set]
    elif isinstance(node, dict):
        items = list(node.items())
    else:
        return set()
    found = set()
    for key, value in items:
        found.add(f"{prefix}{key}")
        found |= explicit_fields(value, f"{prefix}{key}.")
    return found


def field_value(node: Any, dotted: str) -> Any:
    """The value at a dotted path of a spec (None when a section on the way is unset)."""
    for key in dotted.split("."):
        if node is None:
            return None
        node = node.get(key) if isinstance(node, dict) else getattr(node, key)
    return node


def with_value(model: BaseModel, dotted: str, value: Any) -> BaseModel:
    """A copy of a spec model with the field at a dotted path set (not re-validated)."""
    head, _, rest = dotted.partition(".")
    new = with_value(getattr(model, head), rest, value) if rest else value
    return model.model_copy(update={head: new})


SECRET_KEY = re.compile(
    r"secret|password|passwd|credential|api_?key|access_?key|session_?key|(^|_)token$",
    re.IGNORECASE,
)


def redacted(value):
    """A copy of a config tree with every secret-looking key dropped."""
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items() if not SECRET_KEY.search(k)}
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return value


def dump_spec(spec: JobSpec) -> str:
    return yaml.safe_dump(redacted(spec.model_dump(mode="json")), sort_keys=False)
