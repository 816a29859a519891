"""Recipes: OmegaConf composition, pydantic validation, every problem reported in one pass.

Steps (each collects problems instead of stopping at the first):
1. load the recipe and its ``extends:`` chain (merged left to right, dicts merge, lists replace),
   remembering which file set each key (its provenance);
2. apply ``key=value`` overrides (``~key`` deletes; ``tokenizer=vqgan`` is ``tokenizer.name=vqgan``);
   setting a component's ``name`` resets the ``preset`` and ``params`` set by earlier layers;
3. resolve ``${...}`` interpolations and ``???`` required values, key by key;
4. validate the recipe's structure (``schema.Recipe``, unknown keys rejected at every depth), each
   stage's ``options`` by the model of its ``target`` and ``eval.options`` (``core.options``);
5. validate each component: its name in the registry, its preset, its params against its own
   ``Params`` model, recursing into nested component references (quantizers).

A recipe names components by registry name only. Nothing here imports torch.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ValidationError

from illume_kit.core import footprint, yamlio
from illume_kit.core.options import STAGE_OPTIONS
from illume_kit.core.params import ComponentRef
from illume_kit.core.registry import ComponentSpec, Registry, RegistryError, UnknownComponent
from illume_kit.core.schema import COMPONENT_ROLES, ComponentChoice, Recipe

CLI = "cli"


@dataclass
class Problem:
    path: str
    message: str
    source: str = ""
    hint: str = ""

    def __str__(self) -> str:
        where = f" (set in {self.source})" if self.source else ""
        hint = f" {self.hint}" if self.hint else ""
        body = f"{self.path or '<recipe>'}: {self.message}{where}"
        return f"{body}{'' if body.endswith('.') else '.'}{hint}"


class RecipeError(Exception):
    """All problems found in a recipe; ``str()`` is the full report."""

    def __init__(self, origin: str, problems: Sequence[Problem]):
        self.origin, self.problems = origin, list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        n = len(self.problems)
        lines = [f"{self.origin}: {n} problem{'s' if n != 1 else ''}"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


@dataclass
class ResolvedComponent:
    section: str
    spec: ComponentSpec
    preset: str | None
    params: BaseModel
    weights: str | None = None

    @property
    def params_dict(self) -> dict[str, Any]:
        return self.params.model_dump(mode="json")


@dataclass
class ResolvedRecipe:
    recipe: Recipe
    data: dict[str, Any]
    components: dict[str, ResolvedComponent] = field(default_factory=dict)
    origin: str = ""

    def to_yaml(self) -> str:
        """The fully resolved recipe, component params expanded (presets applied), as data only."""
        d = dict(self.data)
        for sec, rc in self.components.items():
            d[sec] = {"name": rc.spec.name, "preset": rc.preset, "params": rc.params_dict, "weights": rc.weights}
        return yaml.safe_dump(d, sort_keys=False)


# ---------------------------------------------------------------------------------------------
# 1. loading with provenance
def _leaves(node: Any, prefix: str = "") -> Iterable[str]:
    if isinstance(node, Mapping) and node:
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif prefix:
        yield prefix


def _missing_leaves(node: Any, prefix: str = "") -> Iterable[str]:
    if isinstance(node, Mapping):
        for k, v in node.items():
            yield from _missing_leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif node == "???" and prefix:
        yield prefix


def _read_yaml(path: Path, via: str, problems: list[Problem]) -> dict | None:
    if not path.is_file():
        problems.append(Problem("extends" if via else "", f"recipe file {str(path)!r} does not exist", via))
        return None
    try:
        data = yamlio.safe_load(path.read_text(), str(path))
    except yamlio.YamlError as exc:
        problems.append(Problem("", str(exc), via))
        return None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problems.append(Problem("", f"{path} is not valid YAML{at}: {getattr(exc, 'problem', exc)}", via))
        return None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(Problem("", f"{path} must be a YAML mapping (key: value), not a {type(data).__name__}", via))
        return None
    return data


def _find_extends(ref: str, base: Path, search: Sequence[Path]) -> Path:
    for root in (base.parent, Path.cwd(), *search):
        p = (root / ref).resolve()
        if p.is_file():
            return p
    return (base.parent / ref).resolve()


def _load_layers(
    path: Path, problems: list[Problem], search: Sequence[Path], stack: tuple[Path, ...] = (), via: str = ""
) -> list[tuple[str, dict]]:
    """Depth-first: a file's parents come before the file itself."""
    path = path.resolve()
    if path in stack:
        cycle = " -> ".join(str(p.name) for p in (*stack, path))
        problems.append(Problem("extends", f"extends cycle: {cycle}", str(stack[-1])))
        return []
    data = _read_yaml(path, via, problems)
    if data is None:
        return []
    ext = data.pop("extends", None)
    if isinstance(ext, str):
        ext = [ext]
    layers: list[tuple[str, dict]] = []
    if ext is not None and not (isinstance(ext, list) and all(isinstance(e, str) for e in ext)):
        problems.append(Problem("extends", "must be a file path or a list of file paths", str(path)))
        ext = []
    for ref in ext or []:
        layers += _load_layers(_find_extends(ref, path, search), problems, search, (*stack, path), str(path))
    layers.append((str(path), data))
    return layers


def parse_overrides(overrides: Sequence[str], problems: list[Problem]) -> tuple[list[tuple[str, Any]], list[str]]:
    """``a.b=1 train.stages.0.steps=5 tokenizer=vqgan ~eval.metrics`` -> ([(key, value)], deleted keys).

    Values are parsed as YAML (numbers, booleans, lists, mappings); ``tokenizer=vqgan`` means
    ``tokenizer.name=vqgan``. Keys may index lists by position.
    """
    sets: list[tuple[str, Any]] = []
    deletes: list[str] = []
    for ov in overrides:
        if ov.startswith("~"):
            deletes.append(ov[1:])
            continue
        key, eq, raw = ov.partition("=")
        key = key.strip()
        if not eq or not key:
            problems.append(Problem(key or ov, f"override {ov!r} is not key=value", CLI))
            continue
        try:
            value = yamlio.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if key in COMPONENT_ROLES and value is not None and not isinstance(value, dict):
            key = f"{key}.name"  # `detokenizer=null` removes the section instead
        sets.append((key, value))
    return sets, deletes


def _reset_component(cfg: DictConfig, prov: dict[str, str], sec: str, new_name: Any, keeps: set[str]) -> dict[str, str]:
    """A new component name drops the preset/params that earlier layers gave the old one."""
    old = cfg.get(sec) if sec in cfg else None
    if isinstance(old, DictConfig) and old.get("name") != new_name:
        for k in ("preset", "params"):
            if k in old and k not in keeps:
                old.pop(k)
                prov = {p: s for p, s in prov.items() if not p.startswith(f"{sec}.{k}")}
    return prov


def _merge(
    layers: list[tuple[str, dict]], sets: Sequence[tuple[str, Any]], deletes: Sequence[str], problems: list[Problem]
) -> tuple[DictConfig, dict[str, str]]:
    cfg = OmegaConf.create({})
    prov: dict[str, str] = {}
    for source, data in layers:
        for sec in COMPONENT_ROLES:
            new = data.get(sec)
            if isinstance(new, dict) and "name" in new:  # the layer's own preset/params merge in next
                prov = _reset_component(cfg, prov, sec, new["name"], set())
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.create(data))  # dicts merge, lists replace
        except Exception as exc:
            problems.append(
                Problem("", f"cannot merge {source} onto what it extends: {str(exc).splitlines()[0]}", source)
            )
            continue
        for leaf in _leaves(data):
            prov[leaf] = source
        # OmegaConf's merge keeps an earlier value under a later `???`; the later layer asks for the
        # value to be given, so it stays required
        for leaf in _missing_leaves(data):
            try:
                OmegaConf.update(cfg, leaf, "???", merge=True, force_add=True)
            except Exception:  # a key OmegaConf cannot address; the merged value stands
                pass
    set_keys = {k for k, _ in sets}
    for key, value in sets:
        sec, _, rest = key.partition(".")
        if sec in COMPONENT_ROLES and rest == "name":
            # a section given whole (`tokenizer.params={...}`) replaces, so it is not dropped first;
            # `tokenizer.params.x=1` refines the new component's params and the old ones still go
            keeps = {k.split(".")[1] for k in set_keys if k.startswith(sec + ".") and k.count(".") == 1}
            prov = _reset_component(cfg, prov, sec, value, keeps)
        try:
            OmegaConf.update(cfg, key, value, merge=True, force_add=True)
        except Exception as exc:
            problems.append(Problem(key, f"cannot set: {str(exc).splitlines()[0]}", CLI))
            continue
        prov[key] = CLI
        for leaf in _leaves(value, key) if isinstance(value, dict) else ():
            prov[leaf] = CLI
    for key in deletes:
        parent, _, last = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if isinstance(node, DictConfig) and last in node:
            node.pop(last)
        else:
            problems.append(Problem(key, "cannot delete: no such key", CLI))
    return cfg, prov


def source_of(path: str, prov: Mapping[str, str]) -> str:
    p = path
    while p:
        if p in prov:
            return prov[p]
        p = p.rpartition(".")[0]
    hits = [s for k, s in prov.items() if k.startswith(path + ".")] if path else []
    return hits[-1] if hits else ""


# ---------------------------------------------------------------------------------------------
# 3. resolution, key by key, so every bad interpolation is reported
def _resolve(cfg: DictConfig, prov: Mapping[str, str], problems: list[Problem], unset_missing: bool = False) -> dict:
    out: dict = {}

    def walk(node: Any, prefix: str, dst: dict) -> None:
        for key in node.keys():
            path = f"{prefix}.{key}" if prefix else str(key)
            if OmegaConf.is_missing(node, key) and unset_missing:
                dst[key] = None
                continue
            if OmegaConf.is_missing(node, key):
                problems.append(
                    Problem(
                        path,
                        "required value is missing (???)",
                        source_of(path, prov),
                        f"Set it in the recipe or with {path}=VALUE.",
                    )
                )
                continue
            try:
                value = node[key]
            except OmegaConfBaseException as exc:
                msg = str(exc).splitlines()[0]
                problems.append(Problem(path, f"bad interpolation: {msg}", source_of(path, prov)))
                continue
            if isinstance(value, DictConfig):
                dst[key] = {}
                walk(value, path, dst[key])
            elif OmegaConf.is_list(value):
                try:
                    dst[key] = OmegaConf.to_container(value, resolve=True, throw_on_missing=True)
                except OmegaConfBaseException as exc:
                    problems.append(Problem(path, f"bad value: {str(exc).splitlines()[0]}", source_of(path, prov)))
            else:
                dst[key] = value

    walk(cfg, "", out)
    return out


# ---------------------------------------------------------------------------------------------
# 4./5. validation
def _members(ann: Any) -> list[Any]:
    """The alternatives of an annotation: ``Annotated`` and ``X | Y | None`` unwrapped, ``None`` left out."""
    if get_origin(ann) is Annotated:
        return _members(get_args(ann)[0])
    if get_origin(ann) in (Union, UnionType):
        return [m for a in get_args(ann) if a is not type(None) for m in _members(a)]
    return [ann]


def _is_model(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _tagged(models: Sequence[type[BaseModel]], tag: Any) -> type[BaseModel] | None:
    """The member of a discriminated union whose tag is ``tag`` (a field typed ``Literal[tag]``)."""
    if len(models) < 2:
        return None
    return next(
        (
            m
            for m in models
            for f in m.model_fields.values()
            if get_origin(f.annotation) is Literal and get_args(f.annotation) == (tag,)
        ),
        None,
    )


def _branch(members: Sequence[Any], label: str) -> list[Any]:
    """The alternatives of a plain union that pydantic's branch label (``dict[str,float]``, ``float``,
    a model's name) names."""
    named = [
        m
        for m in members
        if (_is_model(m) and m.__name__ == label)
        or (get_origin(m) is not None and label.startswith(getattr(get_origin(m), "__name__", "\0")))
    ]
    return named or [m for m in members if not _is_model(m) and get_origin(m) is None]


@dataclass
class _Where:
    shown: list[str]  # the recipe key path
    owners: list[type[BaseModel]]  # the models that own its last part
    at_branch: bool = False  # the location is a union alternative as a whole (it rejected the input's kind)


def _locate(model: type[BaseModel], loc: Sequence[Any]) -> _Where:
    """Where a pydantic error location is in the recipe.

    List indices stay in the path; the tag pydantic adds for a discriminated union (a stage's
    ``target``) and the label of a plain union's alternative are dropped, and the alternative they
    name owns what follows.
    """
    where = _Where([], [])
    cur: list[Any] = [model]
    for part in loc:
        where.at_branch = False
        if part == "[key]":  # pydantic marks an invalid mapping key so; the key is the part before
            continue
        models = [c for c in cur if _is_model(c)]
        tagged = _tagged(models, part)
        if tagged is not None:
            cur = [tagged]
            continue
        if len(cur) > 1 and isinstance(part, str) and not any(part in m.model_fields for m in models):
            cur, where.at_branch = _branch(cur, part), True
            continue
        where.owners = models
        where.shown.append(str(part))
        nxt: list[Any] = []
        for c in cur:
            if _is_model(c) and str(part) in c.model_fields:
                nxt += _members(c.model_fields[str(part)].annotation)
            elif get_origin(c) in (list, tuple) and isinstance(part, int):
                args = [a for a in get_args(c) if a is not Ellipsis]
                nxt += _members(
                    args[min(part, len(args) - 1)] if get_origin(c) is tuple and args else (args[0] if args else Any)
                )
            elif get_origin(c) is dict and len(get_args(c)) == 2:
                nxt += _members(get_args(c)[1])
        cur = nxt
    return where


def _stage_kind(options_model: type[BaseModel]) -> str | None:
    return next((k for k, m in STAGE_OPTIONS.items() if m is options_model), None)


def _unknown_key(key: str, owners: Sequence[type[BaseModel]]) -> tuple[str, str]:
    """(message, hint) for an unknown key: did-you-mean, valid keys, and for stage options which
    kinds of stage take the key."""
    fields = list(dict.fromkeys(f for o in owners for f in o.model_fields))
    close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
    kind = _stage_kind(owners[0]) if len(owners) == 1 else None
    msg = f"unknown key of {kind} stage options" if kind else "unknown key"
    elsewhere = [k for k, m in STAGE_OPTIONS.items() if kind and key in m.model_fields]
    hint = (
        f"{key} is an option of {' and '.join(elsewhere)} stages. "
        if elsewhere
        else f"Did you mean {close[0]}? "
        if close
        else ""
    )
    return msg, hint + (f"(valid: {', '.join(fields)})" if fields else "")


_KIND_ERRORS = (
    "dict_type",
    "list_type",
    "tuple_type",
    "model_type",
    "model_attributes_type",
    "float_type",
    "int_type",
    "bool_type",
    "string_type",
)


def pydantic_problems(
    exc: ValidationError, model: type[BaseModel], prefix: str, prov: Mapping[str, str]
) -> list[Problem]:
    out: list[Problem] = []
    other_branch: dict[str, Problem] = {}  # per path: an alternative that only says the input is of another kind
    for err in exc.errors():
        where = _locate(model, err["loc"])
        loc = where.shown
        ctx = err.get("ctx") or {}
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc = [*loc, str(ctx.get("discriminator", "")).strip("'\"")]
        path = ".".join([prefix, *loc] if prefix else loc)
        hint = ""
        if err["type"] == "extra_forbidden":
            msg, hint = _unknown_key(loc[-1], where.owners)
        elif err["type"] in ("missing", "union_tag_not_found"):
            msg = "required value is missing"
        elif err["type"] == "literal_error":
            msg = f"invalid value {err.get('input')!r}"
            hint = err["msg"].replace("Input should be", "Valid:")
        elif err["type"] == "value_error":
            msg = err["msg"].removeprefix("Value error, ")
        elif err["type"] == "union_tag_invalid":
            msg = f"invalid value {ctx.get('tag')!r}"
            hint = f"Valid: {ctx.get('expected_tags')}"
        else:
            msg = (
                f"{err['msg']} (got {err.get('input')!r})"
                if "input" in err and not isinstance(err.get("input"), dict)
                else err["msg"]
            )
        problem = Problem(path, msg, source_of(path, prov), hint)
        if where.at_branch and err["type"] in _KIND_ERRORS:
            other_branch.setdefault(path, problem)
        else:
            out.append(problem)
    # a union's alternatives each report; the one meant for the input's kind says what is wrong
    out += [
        p for path, p in other_branch.items() if not any(q.path == path or q.path.startswith(path + ".") for q in out)
    ]
    return out


def _validate_params(
    spec: ComponentSpec,
    preset: str | None,
    params: Mapping[str, Any],
    path: str,
    registry: Registry,
    prov: Mapping[str, str],
    problems: list[Problem],
) -> BaseModel | None:
    try:
        params_cls = spec.load_params()
        presets = spec.load_presets()
    except Exception as exc:  # plugin import problem: one line, no traceback
        problems.append(
            Problem(
                path,
                f"cannot load {spec.role} {spec.name!r} from {spec.dist}: {type(exc).__name__}: {exc}",
                source_of(path, prov),
            )
        )
        return None
    merged: dict[str, Any] = {}
    if preset is not None:
        if preset not in presets:
            close = difflib.get_close_matches(preset, list(presets), n=1)
            problems.append(
                Problem(
                    f"{path}.preset",
                    f"unknown preset {preset!r} of {spec.role} {spec.name!r}",
                    source_of(f"{path}.preset", prov),
                    (f"Did you mean {close[0]}? " if close else "") + f"(valid: {', '.join(presets) or 'none'})",
                )
            )
            return None
        merged = _deep_merge(presets[preset], params)
    else:
        merged = dict(params)
    try:
        obj = params_cls.model_validate(merged)
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc, params_cls, f"{path}.params", prov))
        return None
    _check_refs(obj, f"{path}.params", registry, prov, problems)
    return obj


def _check_refs(
    obj: BaseModel, path: str, registry: Registry, prov: Mapping[str, str], problems: list[Problem]
) -> None:
    for fname in type(obj).model_fields:
        value = getattr(obj, fname)
        # a list of refs (a mixture's parts) is checked item by item, each named by its index
        entries = (
            [(f"{path}.{fname}[{i}]", v) for i, v in enumerate(value)]
            if isinstance(value, list)
            else [(f"{path}.{fname}", value)]
        )
        for sub, item in entries:
            if isinstance(item, ComponentRef) and item.role:
                try:
                    spec = registry.get(item.role, item.name)
                except UnknownComponent as exc:
                    problems.append(Problem(f"{sub}.name", str(exc), source_of(sub, prov)))
                    continue
                _validate_params(spec, None, item.params, sub, registry, prov, problems)
            elif isinstance(item, BaseModel):
                _check_refs(item, sub, registry, prov, problems)


def _deep_merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def validate_components(
    data: Mapping[str, Any], registry: Registry, prov: Mapping[str, str], problems: list[Problem]
) -> dict[str, ResolvedComponent]:
    out: dict[str, ResolvedComponent] = {}
    for section, role in COMPONENT_ROLES.items():
        if data.get(section) is None:
            continue
        try:
            choice = ComponentChoice.model_validate(data[section])
        except ValidationError:
            continue  # already reported by the structural check
        try:
            spec = registry.get(role, choice.name)
        except UnknownComponent as exc:
            problems.append(Problem(f"{section}.name", str(exc), source_of(f"{section}.name", prov)))
            continue
        params = _validate_params(spec, choice.preset, choice.params, section, registry, prov, problems)
        if params is not None:
            out[section] = ResolvedComponent(section, spec, choice.preset, params, choice.weights)
    return out


def check_compatibility(
    comps: Mapping[str, ResolvedComponent], registry: Registry, prov: Mapping[str, str], problems: list[Problem]
) -> None:
    """Each composed component's ``requires`` against what the others ``provide`` (registry records only)."""
    for section, rc in comps.items():
        others = {s: o.spec for s, o in comps.items() if s != section}
        offered = {cap for spec in others.values() for cap in spec.provides}
        missing = [cap for cap in rc.spec.requires if cap not in offered]
        if not missing:
            continue
        partner = others.get("tokenizer")
        what = (
            f"tokenizer {partner.name!r}, which provides {', '.join(partner.provides) or 'nothing'}"
            if partner is not None
            else "the other components"
        )
        fits = [s.name for s in registry.specs(rc.spec.role) if set(s.requires) <= offered]
        hint = (
            f"; registered {rc.spec.role}s that work with it: {', '.join(fits)}"
            if fits
            else f"; no registered {rc.spec.role} works with it"
        )
        problems.append(
            Problem(
                f"{section}.name",
                f"{rc.spec.role} {rc.spec.name!r} requires {', '.join(missing)}, not provided by {what}{hint}",
                source_of(f"{section}.name", prov),
            )
        )


def check_metric_names(
    data: Mapping[str, Any], registry: Registry, prov: Mapping[str, str], problems: list[Problem]
) -> None:
    """Each ``eval.metrics`` entry ``family/quantity`` names a registered metric family."""
    names = (data.get("eval") or {}).get("metrics") if isinstance(data.get("eval"), Mapping) else None
    if not isinstance(names, list):
        return  # a wrong type is reported by the schema
    families = registry.names("metric")
    for i, name in enumerate(names):
        if not isinstance(name, str):
            continue
        family, sep, rest = name.partition("/")
        if registry.has("metric", family):
            continue
        close = difflib.get_close_matches(family, families, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(c + sep + rest for c in close)}?" if close else ""
        problems.append(
            Problem(
                f"eval.metrics.{i}",
                f"unknown metric family {family!r} in {name!r}.{hint} "
                f"(registered: {', '.join(families) or 'none'}; "
                "illume-kit list metrics)",
                source_of("eval.metrics", prov),
            )
        )


def metric_params_problems(
    params: Any, registry: Registry, prefix: str, prov: Mapping[str, str] | None = None
) -> list[Problem]:
    """Problems of ``{family: {key: value}}``: each family registered, its keys valid for its ``Params``."""
    if not isinstance(params, Mapping):
        return []  # a wrong type is reported by the schema
    prov = prov or {}
    families = registry.names("metric")
    out: list[Problem] = []
    for family, values in params.items():
        where = f"{prefix}.{family}" if prefix else str(family)
        if not registry.has("metric", family):
            close = difflib.get_close_matches(str(family), families, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            out.append(
                Problem(
                    where,
                    f"unknown metric family {family!r}.{hint} (registered: {', '.join(families) or 'none'})",
                    source_of(where, prov),
                )
            )
            continue
        if not isinstance(values, Mapping):
            continue
        model = registry.get("metric", family).load_params()
        try:
            model.model_validate(dict(values))
        except ValidationError as exc:
            out.extend(pydantic_problems(exc, model, where, prov))
    return out


def check_metric_params(
    data: Mapping[str, Any], registry: Registry, prov: Mapping[str, str], problems: list[Problem]
) -> None:
    """``eval.metric_params``: a registered metric family -> params its ``Params`` accepts."""
    section = data.get("eval")
    if isinstance(section, Mapping):
        problems.extend(metric_params_problems(section.get("metric_params"), registry, "eval.metric_params", prov))


# ---------------------------------------------------------------------------------------------
def default_search_paths(registry: Registry | None) -> list[Path]:
    return [Path(s.path) for s in (registry.recipe_sources if registry else [])]


def shipped_recipes(registry: Registry | None) -> list[tuple[str, Path]]:
    """(name, file) of every shipped recipe, ``base/`` layers aside; a name is the file's path in its
    source folder without ``.yaml``, behind the source's prefix (``tokenizers/dualvitok_tiny``)."""
    out = []
    for src in registry.recipe_sources if registry else []:
        root = Path(src.path)
        for p in sorted(root.rglob("*.yaml")):
            rel = p.relative_to(root).with_suffix("").as_posix()
            if not rel.startswith("base/"):
                out.append((f"{src.prefix}{rel}", p))
    return out


def find_shipped(ref: str | Path, registry: Registry | None) -> Path | None:
    """The shipped recipe a name refers to: ``dualvitok_qwen2_tiny``, ``tokenizers/dualvitok_tiny.yaml``
    or a checkout's ``recipes/...`` path (so the same command works after a plain install)."""
    text = Path(ref).as_posix()
    names = [text] + ([text[len("recipes/") :]] if text.startswith("recipes/") else [])
    for src in registry.recipe_sources if registry else []:
        for name in names:
            rels = [name] + ([name[len(src.prefix) :]] if src.prefix and name.startswith(src.prefix) else [])
            for rel in rels:
                for cand in (rel, rel + ".yaml"):
                    p = Path(src.path) / cand
                    if p.is_file():
                        return p
    return None


def _missing_recipe(path: Path, registry: Registry | None) -> Problem:
    names = [n for n, _ in shipped_recipes(registry)]
    close = difflib.get_close_matches(path.with_suffix("").as_posix().removeprefix("recipes/"), names, n=3)
    hint = (
        f"Did you mean {', '.join(close)}?"
        if close
        else "Give a recipe file, or a shipped recipe's name (`illume-kit recipes` lists them)."
    )
    return Problem("", f"recipe file {str(path)!r} does not exist", hint=hint)


def load_recipe(
    path: str | Path,
    overrides: Sequence[str] = (),
    registry: Registry | None = None,
    components: bool = True,
    unset_missing: bool = False,
) -> ResolvedRecipe:
    """Load, override, resolve and validate a recipe; raise ``RecipeError`` with every problem.

    ``unset_missing``: required ``???`` values become null instead of problems (``compose --meta``,
    which reads no weight folder, builds recipes whose folders are left open)."""
    if registry is None and components:
        from illume_kit.core.plugins import get_registry

        registry = get_registry()
    problems: list[Problem] = []
    path = Path(path)
    search = default_search_paths(registry)
    if not path.is_file():
        shipped = find_shipped(path, registry)
        if shipped is None:
            raise RecipeError(str(path), [_missing_recipe(path, registry)])
        path = shipped
    layers = _load_layers(path, problems, search)
    sets, deletes = parse_overrides(overrides, problems)
    origin = str(path)
    if problems:  # a file that cannot be read makes every later message noise
        raise RecipeError(origin, problems)
    cfg, prov = _merge(layers, sets, deletes, problems)
    data = _resolve(cfg, prov, problems, unset_missing)
    if "illume_kit" in data and data["illume_kit"] != 1:
        v = data["illume_kit"]
        problems.append(
            Problem(
                "illume_kit",
                f"recipe schema version {v!r} is not supported (this illume-kit reads 1)",
                source_of("illume_kit", prov),
            )
        )
        raise RecipeError(origin, problems)
    recipe = None
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc, Recipe, "", prov))
    comps = validate_components(data, registry, prov, problems) if components and registry is not None else {}
    if comps and all(sec in comps for sec in COMPONENT_ROLES if data.get(sec) is not None):
        check_compatibility(comps, registry, prov, problems)  # only between components that resolved
    if components and registry is not None:
        check_metric_names(data, registry, prov, problems)
        check_metric_params(data, registry, prov, problems)
    if not problems and comps:
        too_large = footprint.check(data, {sec: rc.params for sec, rc in comps.items()})
        if too_large is not None:
            key, msg = too_large
            problems.append(Problem(key, msg, source_of(key, prov)))
    if problems:
        raise RecipeError(origin, problems)
    return ResolvedRecipe(recipe, data, comps, origin=origin)


def recipe_json_schema() -> dict:
    return Recipe.model_json_schema()


__all__ = [
    "Problem",
    "RecipeError",
    "ResolvedRecipe",
    "ResolvedComponent",
    "load_recipe",
    "parse_overrides",
    "recipe_json_schema",
    "RegistryError",
]
