"""Resolve params.yaml + preset + ``--set`` overrides into a typed ``Config``.

Layers, each over the one before:  built-in defaults (the ``toy`` settings)
<- params.yaml <- ``--preset P`` (a named overlay in ``sdm/config/presets``)
<- ``--set section.key=value`` overrides (the syntax of ``dvc exp run -S``).
Every problem is a ``ConfigError`` that names the file or key path.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from sdm.config.schema import Config
from sdm.errors import InputError
from sdm.suggest import did_you_mean

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(InputError):
    """A configuration problem; the message names the file or key path."""


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; syntax errors name the file, line and column."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def _closest(key: str, valid: list[str]) -> str:
    # A misspelt config key always gets the nearest valid key: the list of keys is short and fixed.
    return did_you_mean(key, valid, cutoff=0.0)


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Convert a YAML value to the annotated type, or raise naming the path."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return _build(tp, value, path)
    if origin is dict:
        _, item_tp = typing.get_args(tp)
        if value in (None, ""):  # `guards:` with nothing under it, or `--set ...guards=`
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, item_tp, f"{path}.{k}") for k, v in value.items()}
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            # "32,16,8" (the official flag style) is accepted for lists.
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        number: float | None = None
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            # PyYAML reads "1e-4" as a string (YAML 1.1); accept it as a number.
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        # NaN passes every min/max comparison and inf overflows the samplers: neither is ever a setting
        # (YAML's .nan/.inf, "nan" from --set, or NaN/Infinity from a command's float flag).
        if not math.isfinite(number):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        # YAML reads an unquoted true/false (from params.yaml or --set) as a boolean: a string setting whose
        # choices are "true"/"false" (sample.compile) takes it as written.
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (str, int, float)):
            return str(value)
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    return value


def _check(value: Any, meta: typing.Mapping[str, Any], path: str) -> None:
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(str, meta['choices']))}"
                          f"{did_you_mean(value, meta['choices'])}")
    if "subset_of" in meta:
        bad = [v for v in value if v not in meta["subset_of"]]
        if bad:
            raise ConfigError(f"{path}: {bad!r} not among {', '.join(meta['subset_of'])}")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{path}: {value!r} is below the minimum {meta['min']}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{path}: {value!r} is above the maximum {meta['max']}")
    if "length" in meta and len(value) != meta["length"]:
        raise ConfigError(f"{path}: expected {meta['length']} values, got {value!r}")
    if "min_each" in meta and any(v < meta["min_each"] for v in value):
        raise ConfigError(f"{path}: every value must be >= {meta['min_each']}, got {value!r}")


def _build(cls: type, data: dict[str, Any], path: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            where = f"{path}.{key}" if path else key
            if where in MOVED_KEYS:
                raise ConfigError(f"'{where}' is retired: {MOVED_KEYS[where]}")
            raise ConfigError(f"unknown key '{where}'{_closest(key, list(fields))}")
    kwargs = {}
    for name, f in fields.items():
        where = f"{path}.{name}" if path else name
        if name in data:
            value = _coerce(data[name], hints[name], where)
        elif f.default is not dataclasses.MISSING:
            value = f.default
        else:
            value = f.default_factory()  # type: ignore[misc]
        if not dataclasses.is_dataclass(value):
            _check(value, f.metadata, where)
        kwargs[name] = value
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config (or section) as plain dicts and lists, for YAML/JSON."""
    return dataclasses.asdict(cfg)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.pretrain.lr=1e-4"`` -> (["train", "pretrain", "lr"], "1e-4" parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"--set {text!r}: the key must be a dotted path like model.num_classes")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def _size_value(value: Any) -> Any:
    """``--set *.image_size=S`` or ``=HxW`` -> ``[S, S]`` / ``[H, W]`` (as ``--size``); lists pass unchanged."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [value, value]
    if isinstance(value, str) and "x" in value.lower():
        parts = value.lower().split("x")
        if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
            return [int(p) for p in parts]
    return value


def _nest(parts: list[str], value: Any) -> dict[str, Any]:
    out: Any = value
    for p in reversed(parts):
        out = {p: out}
    return out


def load_preset(name: str) -> dict[str, Any]:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown preset '{name}'{_closest(name, available_presets())}; "
                          f"presets: {', '.join(available_presets())}")
    return read_yaml(path)


def resolve(
    preset: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    params: str | Path | None = "params.yaml",
) -> Config:
    """Resolve the layered configuration into a validated ``Config``.

    ``params`` is read when the file exists (a missing params.yaml just means
    the built-in defaults); pass ``None`` to ignore it.
    """
    raw: dict[str, Any] = {}
    if params is not None and Path(params).exists():
        raw = read_yaml(params)
        _build(Config, raw, "")  # report params.yaml's own errors first
    if preset:
        raw = _merge(raw, load_preset(preset))
        raw["preset"] = preset
    sizes_set: dict[str, Any] = {}
    for text in overrides:
        parts, value = parse_override(text)
        if parts in (["data", "image_size"], ["model", "image_size"]):
            value = _size_value(value)
            sizes_set[parts[0]] = value
        raw = _merge(raw, _nest(parts, value))
    if len(sizes_set) == 1:
        # The model takes the data's size: one --set moves both, as `sdm data prepare --size` does.
        (given, value), = sizes_set.items()
        other = "model" if given == "data" else "data"
        raw = _merge(raw, {other: {"image_size": value}})
    cfg = _build(Config, raw, "")
    if list(cfg.model.image_size) != list(cfg.data.image_size):
        raise ConfigError(f"model.image_size {cfg.model.image_size} differs from data.image_size "
                          f"{cfg.data.image_size}: set both to the same [H, W]")
    return cfg


# Keys older releases wrote into saved configs (checkpoints' config.json / train_state.json), no longer
# settings: dropped on reading so those checkpoints still load. Not accepted in params or --set.
RETIRED_KEYS = {
    "train": ("fail_at_step",),  # a test-only fault; tests now install a worker hook
    "register": ("primary_metric",),  # now register.promotion.metric (MOVED_KEYS)
}

# Keys a params.yaml may still hold from an older release, with what to write instead: a clear
# message rather than "unknown key".
MOVED_KEYS = {
    "register.primary_metric": "write it as register.promotion.metric (same values: auto, or a key such as "
                               "fsd@1.5); register.promotion also holds min_improvement and guards "
                               "(mlflow/README.md: Promotion)",
}


def _drop_retired(data: dict[str, Any]) -> dict[str, Any]:
    out = dict(data)
    for section, keys in RETIRED_KEYS.items():
        if isinstance(out.get(section), dict):
            out[section] = {k: v for k, v in out[section].items() if k not in keys}
    return out


def from_dict(data: dict[str, Any], section: type = Config, path: str = "") -> Any:
    """Build and validate a config (or one section) from a plain mapping (e.g. a checkpoint's saved config)."""
    return _build(section, _drop_retired(data) if section is Config else data, path)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def write_resolved(cfg: Config, out_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config beside a command's outputs (atomically)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / name
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(dump_yaml(cfg) if name.endswith((".yaml", ".yml")) else json.dumps(to_dict(cfg), indent=2))
    tmp.replace(target)
    return target
