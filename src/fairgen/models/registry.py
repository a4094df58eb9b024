"""The model registry: one entry (`Family`) per model family, built-ins and plugins alike.

A spec string `<family>[:<arg>]` names a family and its argument (a checkpoint directory, a hub id, ...).
Every family is built the same way, `family.build(arg, device, **options)`: the registry checks the
argument and the options against the entry, converts option values (they may come as strings from
`--model-option KEY=VALUE`), imports the constructor on first use and calls it as
`constructor(arg, device, **options)`.

Built-in entries are in families.py. A plugin package registers its own under the `fairgen.models` entry
point group, pointing at a `Family` object:

    [project.entry-points."fairgen.models"]
    vila-u = "fairgen_vila_u.family:FAMILY"

A built-in name wins over an entry point of the same name. An entry point may also name a bare class
(the older plugin form): it is built as `Class(arg)` (`Class()` without an argument) and takes neither a
device nor options. docs/architecture.md, "Adding a model family", says what a family file provides.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from ..types import FairgenError
from .protocols import CAPABILITIES, Model

GROUP = "fairgen.models"


# -- option types: each turns a --model-option string (or a Python value) into the constructor's value -------
def text(value: Any) -> str:
    """Any value, as a string."""
    return str(value)


def integer(value: Any) -> int:
    """An int, or a string or whole float that is one."""
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise ValueError("an integer") from None


def number(value: Any) -> float:
    """A float, or a string that is one."""
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise ValueError("a number") from None


_WORDS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def flag(value: Any) -> bool:
    """A bool, or true/false/1/0/yes/no/on/off as a string or an int."""
    if isinstance(value, bool):
        return value
    word = _WORDS.get(str(value).strip().lower())
    if word is None:
        raise ValueError("true or false")
    return word


DTYPES = ("bf16", "fp16", "fp32")


def dtype(value: Any) -> Any:
    """A weights dtype name (bf16, fp16, fp32 and their long names) or a torch.dtype."""
    if not isinstance(value, str):
        return value  # a torch.dtype, checked by the family
    name = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(value.strip().lower(), value.strip().lower())
    if name not in DTYPES:
        raise ValueError(f"one of {', '.join(DTYPES)}")
    return name


@dataclass(frozen=True)
class Option:
    """A family option: what it means (units, default) and its type (a function from the given value)."""

    help: str
    kind: Callable[[Any], Any] = text


# Options many families share, so they read the same everywhere.
DTYPE = Option("weights dtype: bf16, fp16 or fp32 (default bf16 on GPU, fp32 on CPU)", dtype)
DEVICE_MAP = Option("accelerate placement over several devices, e.g. auto (then the device is not used)")


@dataclass(frozen=True)
class Family:
    """One model family's registry entry.

    name: the spec prefix (lower case). constructor: "module:attribute" imported on first build (or the
    callable itself), called as constructor(arg, device, **options) -> a Model. spec: the syntax users
    write. description: one line. arg: "required", "optional" or "none". options: name -> Option.
    None: passed on unchecked (only `plugin:`, whose target checks its own). requirements: what it needs
    (packages, hardware), for `fairgen models`. check: "module:function" (or a callable) taking the
    family name and returning why the family cannot run here (one line) or None. capabilities: the names of
    protocols.CAPABILITIES its models implement. world_images: its images are synthetic-world avatars
    (default perception `world`, default labelled set `world`). commands: "module:attribute" of a typer app
    mounted as `fairgen <name> ...` (built-ins only). origin: "built-in" or the entry point."""

    name: str
    constructor: str | Callable[..., Any]
    spec: str
    description: str
    capabilities: frozenset[str]
    arg: str = "required"
    options: Mapping[str, Option] | None = field(default_factory=dict)
    requirements: str = "nothing extra"
    check: str | Callable[[str], str | None] | None = None
    world_images: bool = False
    commands: str | None = None
    origin: str = "built-in"

    def __post_init__(self) -> None:
        unknown = set(self.capabilities) - set(CAPABILITIES)
        if unknown:
            raise FairgenError(f"model family {self.name!r}: unknown capabilities {sorted(unknown)}; "
                               f"known: {', '.join(CAPABILITIES)}")
        if self.arg not in ("required", "optional", "none"):
            raise FairgenError(f"model family {self.name!r}: arg must be required, optional or none")

    def problem(self) -> str | None:
        """Why this family cannot run on this machine (one line), or None."""
        if self.check is None:
            return None
        return resolve(self.check, self.name)(self.name)

    def parse_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Options checked against the entry and converted to their types; FairgenError otherwise."""
        if self.options is None:
            return dict(options)
        unknown = set(options) - set(self.options)
        if unknown and not self.options:
            raise FairgenError(f"model family {self.name!r} takes no options (got {', '.join(sorted(options))})")
        if unknown:
            raise FairgenError(f"model family {self.name!r}: unknown option(s) {', '.join(sorted(unknown))}; "
                               f"known: {', '.join(self.options)}")
        out = {}
        for key, value in options.items():
            try:
                out[key] = self.options[key].kind(value)
            except (TypeError, ValueError) as e:
                raise FairgenError(f"{self.name}: option {key} takes {e or 'another value'} (got {value!r})") from None
        return out

    def build(self, arg: str = "", device: str | None = None, **options: Any) -> Model:
        """The model of `<name>:<arg>`, on `device` (None: the family's default), with options."""
        if self.arg == "required" and not arg:
            raise FairgenError(f"model spec {self.spec} needs an argument after '{self.name}:'")
        if self.arg == "none" and arg:
            raise FairgenError(f"model spec '{self.name}' takes no argument (got {self.name}:{arg})")
        problem = self.problem()
        if problem:
            raise FairgenError(problem)
        model = resolve(self.constructor, self.name)(arg, device, **self.parse_options(options))
        if not isinstance(model, Model):
            raise FairgenError(f"model family {self.name!r} ({self.origin}) built an object that does not "
                               "implement the model protocol (spec, provenance)")
        return model


def resolve(target: str | Callable[..., Any], name: str) -> Callable[..., Any]:
    """A "module:attribute" reference imported now, or the callable itself."""
    if callable(target):
        return target
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise FairgenError(f"model family {name!r}: cannot import {target} ({e})") from None


def from_reference(arg: str, device: str | None, **options: Any) -> Model:
    """`plugin:<module>:<attr>`: a Family there is built (its own argument empty) with the device and
    options; a bare class as `Class()`, which takes neither."""
    module, _, attr = arg.rpartition(":")
    if not module or not attr:
        raise FairgenError(f"model spec 'plugin:{arg}': expected plugin:<module>:<Class>")
    try:
        target = getattr(importlib.import_module(module), attr)
    except Exception as e:  # noqa: BLE001  (a broken plugin is one line, whatever it raised)
        raise FairgenError(f"cannot load plugin {arg!r}: {type(e).__name__}: {e}") from None
    if isinstance(target, Family):
        return target.build("", device, **options)
    if options:
        raise FairgenError(f"plugin {arg!r} is a bare class, which takes no options; make it a fairgen Family")
    return _bare(target, arg)("", device)


def split_spec(spec: str) -> tuple[str, str]:
    """'janus:deepseek-ai/Janus-Pro-1B' -> ('janus', 'deepseek-ai/Janus-Pro-1B'); 'world' -> ('world', '')."""
    name, _, arg = spec.partition(":")
    return name.strip().lower(), arg.strip()


def builtins() -> dict[str, Family]:
    from .families import BUILTIN

    return {f.name: f for f in BUILTIN}


def entry_point_families() -> dict[str, Family | str]:
    """Families installed under the `fairgen.models` entry point group, by lower-cased name: the entry,
    or why it cannot be loaded (one line)."""
    out: dict[str, Family | str] = {}
    for ep in entry_points(group=GROUP):
        name = ep.name.strip().lower()
        try:
            out[name] = _from_entry_point(ep, name)
        except FairgenError as e:
            out[name] = str(e)
    return out


def _from_entry_point(ep: EntryPoint, name: str) -> Family:
    try:
        target = ep.load()
    except Exception as e:  # noqa: BLE001  (a broken plugin is one line, whatever it raised)
        raise FairgenError(f"cannot load plugin {name!r} ({ep.value}): {type(e).__name__}: {e}") from None
    origin = f"entry point {ep.name} = {ep.value}"
    if isinstance(target, Family):
        return replace(target, name=name, origin=origin)
    if callable(target):  # a bare class: the older plugin form
        return Family(name=name, constructor=_bare(target, name), spec=f"{name}[:<arg>]",
                      description=f"plugin {ep.value}", capabilities=frozenset(), arg="optional", origin=origin)
    raise FairgenError(f"plugin {name!r} ({ep.value}) is neither a fairgen Family nor a class")


def _bare(cls: Callable[..., Any], name: str) -> Callable[..., Any]:
    def build(arg: str, device: str | None) -> Any:
        if device is not None:
            raise FairgenError(f"plugin {name!r} is registered as a bare class, which takes no device; register a "
                               "fairgen.models.Family to take one (docs/architecture.md)")
        return cls(arg) if arg else cls()
    return build


def families() -> dict[str, Family]:
    """Every family that can be built: the built-ins, then the loadable plugins not named like a built-in."""
    found = builtins()
    for name, entry in entry_point_families().items():
        if name not in found and isinstance(entry, Family):
            found[name] = entry
    return found


def family(name: str) -> Family:
    """The entry of a family name (or of a spec's family); FairgenError naming the known ones otherwise."""
    given, name = name, split_spec(name)[0]
    found = builtins()
    if name in found:
        return found[name]
    plugins = entry_point_families()
    entry = plugins.get(name)
    if isinstance(entry, Family):
        return entry
    if isinstance(entry, str):
        raise FairgenError(entry)
    raise FairgenError(f"unknown model spec {given!r}; known families: {', '.join([*found, *plugins])}")


def build(spec: str, device: str | None = None, **options: Any) -> Model:
    """The model a spec string names (Family.build)."""
    name, arg = split_spec(spec)
    return family(name).build(arg, device, **options)


def describe() -> list[dict[str, Any]]:
    """One dict per family, built-ins then plugins, for `fairgen models [--json]`: family, spec,
    description, capabilities, options {name: help}, requirements, usable (can it run here now), note
    (why not) and origin. A plugin that cannot load, or is shadowed by a built-in, is listed as unusable."""
    rows = []
    builtin = builtins()
    for f in builtin.values():
        rows.append(_row(f))
    for name, entry in entry_point_families().items():
        if isinstance(entry, str):
            rows.append({"family": name, "spec": f"{name}[:<arg>]", "description": "plugin that cannot be loaded",
                         "capabilities": [], "options": {}, "requirements": "", "usable": False, "note": entry,
                         "origin": "entry point"})
        elif name in builtin:
            rows.append({**_row(entry), "usable": False, "note": "shadowed by the built-in family of the same name"})
        else:
            rows.append(_row(entry))
    return rows


def _row(f: Family) -> dict[str, Any]:
    try:
        problem = f.problem()
    except FairgenError as e:
        problem = str(e)
    return {"family": f.name, "spec": f.spec, "description": f.description,
            "capabilities": sorted(f.capabilities), "options": {k: o.help for k, o in (f.options or {}).items()},
            "requirements": f.requirements, "usable": problem is None, "note": problem or "", "origin": f.origin}


def spec_help(capability: str | None = None) -> str:
    """The built-in families' spec syntaxes (those with `capability`, when given), for CLI help texts:
    'world, tiny[:<dir>], ...' (plugins are not imported to build a help text; `fairgen models` lists them)."""
    return ", ".join(f.spec for f in builtins().values() if capability is None or capability in f.capabilities)


def option_help() -> str:
    """The built-in families' options, for --model-option help texts: 'janus: dtype, device_map, graphs; ...'."""
    return "; ".join(f"{f.name}: {', '.join(f.options)}" for f in builtins().values() if f.options)


def world_images(spec: str) -> bool:
    """Whether the spec's family makes synthetic-world avatars (False for an unknown family: loading it
    reports that)."""
    try:
        return family(spec).world_images
    except FairgenError:
        return False


def help_texts() -> dict[str, str]:
    """The CLI's help texts about models, derived from the built-in entries: model (spec syntaxes),
    perception (which families default to `world`), options (--model-option)."""
    world = ", ".join(f.name for f in builtins().values() if f.world_images)
    return {
        "model": f"Model spec: {spec_help()} or <plugin>[:<arg>] (`fairgen models` lists every family).",
        "perception": f"Perception backend (default: world for {world}; age-gender otherwise).",
        "options": f"KEY=VALUE option of the model's family, repeatable ({option_help()}; `fairgen models` "
                   "explains each).",
    }


def perception_default(spec: str) -> str:
    """The perception backend an audit of this spec uses by default: `world` for a family of world
    images, else `age-gender` (real photos)."""
    return "world" if world_images(spec) else "age-gender"


__all__ = ["DEVICE_MAP", "DTYPE", "DTYPES", "Family", "GROUP", "Option", "build", "builtins", "describe", "dtype",
           "family", "families", "flag", "from_reference", "help_texts", "resolve", "integer", "number", "option_help", "perception_default",
           "spec_help", "split_spec", "text", "world_images"]
