"""Search spaces as YAML: validated on load, turned into Optuna suggestions per trial.

A space file has the sections
  method:          elalora | adalora | lora | eva (a registered method: adapters.method_names())
  method_params:   {name: PARAM}   passed to the adapter (`adapters.build_adapter(params=...)`)
  training_params: {name: PARAM}   overrides of the TrialSpec training settings (e.g. learning_rate)
  module_sets:     {set name: [logical module names] | "regex"}   choices for a categorical `target_modules`;
                   the reserved choice `default` leaves the targets to the method's per-model defaults
                   (adapters.default_targets: e.g. BERT's attention, FFN and pooler matrices). A list matches
                   as PEFT's does, by name or '.'-suffix; a string is a regex full-matched on the model's own
                   module names (PEFT's rule for a str; aliases do not apply), for a set that suffixes cannot
                   name: BERT's FFN output `layer.N.output.dense` without `attention.output.dense`
  module_aliases:  {model_type: {logical name: model's name}}   optional additions to adapters.MODULE_ALIASES
                   (e.g. DeBERTa calls `query` `query_proj`)
  constraints:     [expressions that must hold for a trial's resolved values]
  anchors:         [{name: value}]   start-up trials run right after trial 0, each trial 0 with these values
                   changed (e.g. the space's smallest adapter, so a Pareto search holds both ends of its front
                   whatever the random draws give)
PARAM is {type: int|float|log|step|categorical, low, high, step, choices, of, min, default}.
Ranges that depend on the run length are sampled as fractions: `of: EXPR` multiplies the sampled fraction by
EXPR (over `total_steps` and the parameters resolved before it) and rounds to an integer step count. Sampling
the fraction keeps every Optuna distribution fixed across trials, which TPE needs to learn from them, while
the step count still follows the run length (the same space serves a 100-step demo and a 6,000-step MNLI run).
`default` values, in the same (fraction) coordinates, make up trial 0: the authors' configuration.
"""

from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from elalora_auto.adapters import method_names, model_module_names
from elalora_auto.errors import ConfigError, UserError, close_hint, reject_unknown

TYPES = ("int", "float", "log", "step", "categorical")
CONTEXT_NAMES = ("total_steps",)
DEFAULT_MODULES = "default"
_PARAM_KEYS = {"type", "low", "high", "step", "choices", "of", "min", "default"}
_TOP_KEYS = {"method", "method_params", "training_params", "module_sets", "module_aliases", "constraints", "anchors"}

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv}
_COMPARE = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
            ast.Eq: operator.eq, ast.NotEq: operator.ne}
_FUNCS: dict[str, Callable[..., float]] = {"min": min, "max": max}


class Expr:
    """A small arithmetic expression over named numbers (no Python eval: spaces may come from anyone)."""

    def __init__(self, text: str, where: str) -> None:
        self.text, self.where = str(text), where
        try:
            self._tree = ast.parse(self.text, mode="eval").body
        except SyntaxError as exc:
            raise ConfigError(f"{where}: cannot parse expression {self.text!r} ({exc.msg})") from None
        self.names = self._check(self._tree)

    def _check(self, node: ast.AST) -> set[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return set()
        if isinstance(node, ast.Name):
            return {node.id}
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return self._check(node.left) | self._check(node.right)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return self._check(node.operand)
        if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
            return set().union(self._check(node.left), *(self._check(c) for c in node.comparators))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS:
            return set().union(*(self._check(a) for a in node.args))
        raise ConfigError(f"{self.where}: unsupported syntax in {self.text!r} (use numbers, names, + - * / //, "
                          f"comparisons, min, max)")

    def __call__(self, values: Mapping[str, float]) -> Any:
        def ev(node: ast.AST) -> Any:
            if isinstance(node, ast.Constant):
                return node.value
            if isinstance(node, ast.Name):
                return values[node.id]
            if isinstance(node, ast.BinOp):
                return _BINARY[type(node.op)](ev(node.left), ev(node.right))
            if isinstance(node, ast.UnaryOp):
                return -ev(node.operand)
            if isinstance(node, ast.Call):
                return _FUNCS[node.func.id](*(ev(a) for a in node.args))
            assert isinstance(node, ast.Compare)
            left, ok = ev(node.left), True
            for op, comp in zip(node.ops, node.comparators):
                right = ev(comp)
                ok, left = ok and _COMPARE[type(op)](left, right), right
            return ok

        return ev(self._tree)


@dataclass(frozen=True)
class Param:
    """One searchable value. `name` is also its Optuna parameter name, unique across sections."""

    name: str
    section: str
    type: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] = ()
    of: Expr | None = None
    min: int = 0
    default: Any = None

    def suggest(self, trial: Any) -> Any:
        """The raw Optuna value (a fraction when `of` is set). Optuna 5 takes these keyword-only."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1))
        return trial.suggest_float(self.name, float(self.low), float(self.high),
                                   step=self.step if self.type == "step" else None, log=self.type == "log")

    def resolve(self, raw: Any, values: Mapping[str, float]) -> Any:
        """Turn a raw value into the one the adapter/trainer gets (fraction x EXPR -> integer steps)."""
        if self.type == "step":
            raw = round(raw, 10)  # 0.7 + 4 * 0.05 is 0.8999999999999999 in binary
        if self.of is None:
            return raw
        return max(self.min, int(round(float(raw) * float(self.of(values)))))


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    return value


def _parse_param(name: str, section: str, raw: Any, known: set[str], module_sets: Mapping[str, Any],
                 where: str) -> Param:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping like {{type: float, low: ..., high: ...}}, got {raw!r}")
    reject_unknown(raw, _PARAM_KEYS, f"{where}: unknown key")
    if "type" not in raw:
        raise ConfigError(f"{where}: missing key 'type' (one of {', '.join(TYPES)})")
    kind = raw["type"]
    if kind not in TYPES:
        raise ConfigError(f"{where}.type: unknown type {kind!r} (one of {', '.join(TYPES)})")
    of = Expr(raw["of"], f"{where}.of") if "of" in raw else None
    if of is not None and of.names - known:
        raise ConfigError(f"{where}.of: unknown name {sorted(of.names - known)[0]!r} "
                          f"(use {', '.join(CONTEXT_NAMES)} or a parameter defined above it)")
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: missing key 'choices' (a non-empty list)")
        if name == "target_modules":
            bad = [c for c in choices if c not in module_sets and c != DEFAULT_MODULES]
            if bad:
                raise ConfigError(f"{where}.choices: unknown module set {bad[0]!r} "
                                  f"(define it under module_sets; known: {', '.join(module_sets) or 'none'})")
        param = Param(name, section, kind, choices=tuple(choices), default=raw.get("default"))
        if param.default is not None and param.default not in param.choices:
            raise ConfigError(f"{where}.default: {param.default!r} is not one of the choices")
        return param
    for key in ("low", "high"):
        if key not in raw:
            raise ConfigError(f"{where}: missing key {key!r}")
    low, high = _number(raw["low"], f"{where}.low"), _number(raw["high"], f"{where}.high")
    if low > high:
        raise ConfigError(f"{where}: low {low} > high {high}")
    if kind == "log" and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got {low}")
    step = raw.get("step")
    if kind == "step" and step is None:
        raise ConfigError(f"{where}: missing key 'step' (type step is a float range on a grid)")
    if step is not None and _number(step, f"{where}.step") <= 0:
        raise ConfigError(f"{where}.step: must be > 0, got {step}")
    if kind == "int" and not all(float(v).is_integer() for v in (low, high, step or 1)):
        raise ConfigError(f"{where}: an int range needs integer low, high and step")
    default = raw.get("default")
    if default is not None and not low <= _number(default, f"{where}.default") <= high:
        raise ConfigError(f"{where}.default: {default} is outside [{low}, {high}]")
    return Param(name, section, kind, low=low, high=high, step=step, of=of,
                 min=int(_number(raw.get("min", 0), f"{where}.min")), default=default)


@dataclass
class SearchSpace:
    """A validated space. `suggest` is the only place a trial's hyperparameters are drawn."""

    method: str
    params: list[Param]
    module_sets: dict[str, list[str] | str] = field(default_factory=dict)
    module_aliases: dict[str, dict[str, str]] = field(default_factory=dict)
    constraints: list[Expr] = field(default_factory=list)
    anchors: list[dict[str, Any]] = field(default_factory=list)  # overrides of trial 0, one start-up trial each
    source: str = "<space>"
    path: str | None = None

    @classmethod
    def from_dict(cls, data: Any, source: str = "<space>") -> "SearchSpace":
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping at the top level")
        reject_unknown(data, _TOP_KEYS, f"{source}: unknown key")
        if "method" not in data:
            raise ConfigError(f"{source}: missing key 'method' (one of {', '.join(method_names())})")
        if data["method"] not in method_names():
            raise ConfigError(f"{source}: method: unknown method {data['method']!r} "
                              f"(one of {', '.join(method_names())})")
        module_sets = data.get("module_sets") or {}
        if not isinstance(module_sets, dict) or not all(
                (isinstance(v, list) and v and all(isinstance(m, str) for m in v)) or (isinstance(v, str) and v)
                for v in module_sets.values()):
            raise ConfigError(f"{source}: module_sets: expected {{set name: [module names] or \"regex\"}}")
        for name, regex in ((n, v) for n, v in module_sets.items() if isinstance(v, str)):
            try:
                re.compile(regex)
            except re.error as exc:
                raise ConfigError(f"{source}: module_sets.{name}: invalid regex {regex!r}: {exc}") from None
        aliases = data.get("module_aliases") or {}
        if not isinstance(aliases, dict) or not all(isinstance(v, dict) for v in aliases.values()):
            raise ConfigError(f"{source}: module_aliases: expected {{model_type: {{logical name: model's name}}}}")
        known, params = set(CONTEXT_NAMES), []
        for section in ("method_params", "training_params"):
            entries = data.get(section) or {}
            if not isinstance(entries, dict):
                raise ConfigError(f"{source}: {section}: expected a mapping of parameter name to its range")
            for name, raw in entries.items():
                if name in known:
                    raise ConfigError(f"{source}: {section}.{name}: defined twice")
                params.append(_parse_param(name, section, raw, known, module_sets, f"{source}: {section}.{name}"))
                known.add(name)
        constraints = [Expr(text, f"{source}: constraints[{i}]") for i, text in enumerate(data.get("constraints") or [])]
        for expr in constraints:
            if expr.names - known:
                raise ConfigError(f"{expr.where}: unknown name {sorted(expr.names - known)[0]!r}")
        anchors = data.get("anchors") or []
        if not isinstance(anchors, list) or not all(isinstance(a, dict) and a for a in anchors):
            raise ConfigError(f"{source}: anchors: expected a list of {{parameter: value}} mappings")
        space = cls(data["method"], params, module_sets, aliases, constraints, anchors, source)
        for i, anchor in enumerate(anchors):
            space.default_params(anchor, where=f"{source}: anchors[{i}]", error=ConfigError)
        return space

    @classmethod
    def load(cls, name_or_path: str | Path) -> "SearchSpace":
        path = resolve_resource(name_or_path, "search_spaces")
        space = cls.from_dict(read_yaml(path), source=path.name)
        space.path = str(path)
        return space

    def module_names(self, set_name: str, model_type: str | None) -> list[str] | str:
        """The model's module names for a named set (logical names mapped through adapters.MODULE_ALIASES and the
        space's own `module_aliases`); a regex set as written, already in the model's own names."""
        names = self.module_sets[set_name]
        if isinstance(names, str):
            return names
        return model_module_names(names, model_type, self.module_aliases.get(model_type or ""))

    def suggest(self, trial: Any, context: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Draw one configuration: (method params for build_adapter, training overrides for the TrialSpec).

        `context` holds total_steps and model_type. A configuration that breaks a constraint raises
        optuna.TrialPruned, so the sampler sees it as a bad region without the trial costing any training.
        """
        import optuna

        method_params, training_params, broken = self.draw(trial, context)
        if broken is not None:
            raise optuna.TrialPruned(broken)
        return method_params, training_params

    def draw(self, trial: Any, context: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], str | None]:
        """`suggest`'s configuration and, instead of raising, the first constraint it breaks (None: it keeps them
        all), so a pruned configuration can still be written down (its trial folder)."""
        method_params, training, values = self._resolve({p.name: p.suggest(trial) for p in self.params}, context)
        broken = next((f"constraint {expr.text!r} does not hold" for expr in self.constraints if not expr(values)), None)
        return method_params, training, broken

    def defaults(self, context: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Trial 0's configuration (every `default`) resolved as a trial resolves its draw (fractions to steps,
        module sets to the model's names): the method's defaults wherever a run is built outside a study (`train`),
        so a run and a study's trial 0 with the same settings build the same adapter. A parameter without a default
        is left to the adapter; the constraints are the caller's to check (on the values it finally trains)."""
        method_params, training, _ = self._resolve(
            {p.name: p.default for p in self.params if p.default is not None}, context)
        return method_params, training

    def _resolve(self, raw: Mapping[str, Any],
                 context: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """(method params, training overrides, every resolved value by name) from raw values in Optuna's
        coordinates, in the space's order (an `of` expression reads the parameters before it)."""
        values: dict[str, Any] = {name: context[name] for name in CONTEXT_NAMES}
        sections: dict[str, dict[str, Any]] = {"method_params": {}, "training_params": {}}
        for param in (p for p in self.params if p.name in raw):
            value = param.resolve(raw[param.name], values)
            values[param.name] = value
            if param.name == "target_modules":
                if value == DEFAULT_MODULES:
                    continue
                value = self.module_names(value, context.get("model_type"))
            sections[param.section][param.name] = value
        return sections["method_params"], sections["training_params"], values

    def default_params(self, overrides: Mapping[str, Any] | None = None, where: str = "trial0",
                       error: type[UserError] = UserError) -> dict[str, Any]:
        """Trial 0 in Optuna's coordinates: every `default`, then `overrides` (a study's `trial0`; an anchor's
        values, `where` naming it in the error)."""
        params = {p.name: p.default for p in self.params if p.default is not None}
        by_name = {p.name: p for p in self.params}
        reject_unknown(overrides or {}, by_name, f"{where}: unknown parameter", error)
        for name, value in (overrides or {}).items():
            param = by_name[name]
            if param.choices and value not in param.choices:
                raise error(f"{where}.{name}: {value!r} is not one of {list(param.choices)}")
            if not param.choices and not (isinstance(value, (int, float)) and param.low <= value <= param.high):
                raise error(f"{where}.{name}: {value!r} is outside the space's range [{param.low}, {param.high}]")
            params[name] = value
        return params

    def start_params(self, trial0: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Trial 0 (`default_params(trial0)`), then each anchor: trial 0 with the anchor's values changed."""
        first = self.default_params(trial0)
        return [first, *({**first, **anchor} for anchor in self.anchors)]


def read_yaml(path: Path) -> Any:
    """Read YAML with a one-line error that names the file and line."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path.name}{line}: malformed YAML ({exc.problem or exc.context})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path.name}: malformed YAML ({exc})") from None


def resolve_resource(name_or_path: str | Path, kind: str) -> Path:
    """A file path as given, or a bare name (`elalora`) for a YAML shipped in the package.

    The packaged copies under elalora_auto/resources/ are canonical; the repo's search_spaces/ and studies/ are
    symlinks to them, so a checkout and an installed wheel see the same files.
    """
    path = Path(name_or_path)
    what = {"studies": "study", "search_spaces": "search space"}.get(kind, kind)
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        if not path.is_file():
            siblings = [str(p) for p in path.parent.glob("*.y*ml")] if path.parent.is_dir() else []
            raise UserError(f"{what} file not found: {path}{close_hint(str(path), siblings)}")
        if path.is_dir():
            raise UserError(f"{what} {path} is a folder; pass a .yaml file")
        return path
    packaged = resources.files("elalora_auto") / "resources" / kind / f"{name_or_path}.yaml"
    if not packaged.is_file():
        names = builtin_names(kind)
        raise UserError(f"unknown {what} {str(name_or_path)!r}{close_hint(str(name_or_path), names)} "
                        f"(built in: {', '.join(names)}; or give a .yaml path)")
    return Path(str(packaged))


def builtin_names(kind: str) -> list[str]:
    folder = resources.files("elalora_auto") / "resources" / kind
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
