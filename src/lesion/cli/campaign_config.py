"""Campaign files (issue 17, item 4): `lesion campaign --config FILE` and `--replay RESULT.json`.

A campaign file (YAML or JSON) holds what the command line would: the model, the data, the damage
descriptions (a list, composed in order in every configuration), the number of samples or the interval width,
the seed, and the other campaign options, under the option names with `_` for `-`:

    model: mlp2.pt
    data: mnist5k
    damage: [bitflip:fc1.weight:ber=1e-6, "act-bitflip:act1:ber=1e-7"]
    samples: 500
    seed: 3

Options given on the command line win over the file's (a `--damage` on the command line replaces the file's
list). The campaign's JSON result embeds the options it ran with (`config`), so `lesion campaign --replay
RESULT.json` re-runs its configurations with nothing else given. This module only turns files into
command-line arguments, checked as the command line is: one parser, one set of error messages.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lesion.errors import LesionError

# file key → option; `damage` is a list (one --damage each)
KEYS = {
    "model": "--model", "weights": "--weights", "device": "--device", "output_key": "--output-key",
    "data": "--data", "damage": "--damage", "samples": "--samples", "ci_width": "--ci-width",
    "max_samples": "--max-samples", "tolerance": "--tolerance", "inputs": "--inputs", "seed": "--seed",
    "save_faults": "--save-faults", "json": "--json", "protect": "--protect", "checkpoint": "--checkpoint",
    "executor": "--executor", "workers": "--workers", "worker_threads": "--worker-threads",
    "gpus_per_task": "--gpus-per-task",
}
LISTS = ("damage", "protect")  # keys holding a list: one option each
RECORDED = ("model", "weights", "device", "output_key", "data", "damage", "samples", "ci_width", "max_samples",
            "tolerance", "inputs", "seed", "protect")  # what a result embeds: enough to run the campaign again


def read_config(path: str | Path) -> dict[str, Any]:
    """The campaign options in a YAML (.yaml, .yml) or JSON file, checked for unknown keys and value types."""
    file = Path(path).expanduser()
    try:
        text = file.read_text()
    except OSError as err:
        raise LesionError(f"cannot read campaign file {file}: {err.strerror or err}") from err
    if file.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as err:  # pragma: no cover - pyyaml is a dependency
            raise LesionError("reading a YAML campaign file needs pyyaml; or write it as JSON") from err
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise LesionError(f"{file} is not valid YAML: {str(err).splitlines()[0]}") from err
    else:
        try:
            config = json.loads(text)
        except json.JSONDecodeError as err:
            raise LesionError(f"{file} is not valid JSON ({err.msg} at line {err.lineno}); YAML files end in "
                              ".yaml") from err
    if not isinstance(config, dict):
        raise LesionError(f"{file} must hold a mapping of campaign options (model:, data:, damage:, ...)")
    unknown = sorted(set(config) - set(KEYS))
    if unknown:
        raise LesionError(f"unknown key(s) {', '.join(map(repr, unknown))} in {file}; keys are {', '.join(KEYS)}")
    for key in LISTS:
        value = config.get(key)
        if isinstance(value, str):
            config[key] = [value]
        elif value is not None and not (isinstance(value, list) and all(isinstance(d, str) for d in value)):
            raise LesionError(f"{key} in {file} must be a text or a list of texts, got {value!r}")
    for key, value in config.items():
        if key not in LISTS and (isinstance(value, (dict, list)) or value is None):
            raise LesionError(f"{key} in {file} must be a single value, got {value!r}")
    return config


def as_arguments(config: dict[str, Any]) -> list[str]:
    """The command-line arguments that say what `config` says."""
    out: list[str] = []
    for key, value in config.items():
        if key in LISTS:
            for item in value:
                out += [KEYS[key], item]
        else:
            out += [KEYS[key], str(value).lower() if isinstance(value, bool) else str(value)]
    return out


def _option_value(argv: list[str], option: str) -> str | None:
    for k, arg in enumerate(argv):
        if arg == option and k + 1 < len(argv):
            return argv[k + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    return None


def _without(argv: list[str], option: str) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def embedded_config(path: str | Path) -> dict[str, Any] | None:
    """The options a campaign result (`--json` output) ran with, or None for a plain fault list."""
    try:
        payload = json.loads(Path(path).expanduser().read_text())
    except (OSError, json.JSONDecodeError):
        return None  # the replay itself reports what is wrong with the file
    config = payload.get("config") if isinstance(payload, dict) else None
    return config if isinstance(config, dict) else None


def _command_at(argv: list[str]) -> int | None:
    """Where the sub-command name is in `argv` (after the global options --quiet and --threads N)."""
    k = 0
    while k < len(argv):
        if argv[k] == "--threads":
            k += 2
        elif argv[k] == "--quiet" or argv[k].startswith("--threads="):
            k += 1
        else:
            return k
    return None


def expand(argv: Sequence[str]) -> list[str]:
    """`argv` of a `campaign` command with the options of its `--config FILE` (or of the result it `--replay`s)
    put before the command line's own, which win; other commands' arguments as they are."""
    argv = list(argv)
    at = _command_at(argv)
    if at is None or argv[at] != "campaign":
        return argv
    head, tail = argv[:at + 1], argv[at + 1:]
    if _option_value(tail, "--replay") is not None and _option_value(tail, "--seed") is not None:
        raise LesionError("--replay runs the recorded configurations, drawn with the seed they were drawn with: "
                          "--seed does not apply")
    path = _option_value(tail, "--config")
    if path is not None:
        config = read_config(path)
        tail = _without(tail, "--config")
    elif _option_value(tail, "--replay") is not None and _option_value(tail, "--model") is None:
        replayed = Path(_option_value(tail, "--replay") or "").expanduser()
        if not replayed.is_file():
            raise LesionError(f"--replay: no file {replayed}")
        config = embedded_config(replayed) or {}
        config = {k: v for k, v in config.items() if k in ("model", "weights", "device", "output_key", "data",
                                                           "inputs", "tolerance", "protect")}
    else:
        return argv
    for key in LISTS:
        if _option_value(tail, KEYS[key]) is not None:
            config.pop(key, None)
    given = {k for k, option in KEYS.items() if _option_value(tail, option) is not None}
    config = {k: v for k, v in config.items() if k not in given}
    return [*head, *as_arguments(config), *tail]


def recorded(args: Any) -> dict[str, Any]:
    """The options a campaign ran with, as a campaign file would give them (embedded in its JSON result); files
    named by absolute path, so that the result replays from any folder."""
    out = {key: getattr(args, key) for key in RECORDED if getattr(args, key, None) is not None}
    for key in ("model", "weights"):
        if key in out and Path(out[key]).expanduser().is_file():
            out[key] = str(Path(out[key]).expanduser().resolve())
    return out
