"""Every hint a command prints names options of that command: each `--option` in the string literals of the modules
behind a command exists in that command's parser, unless the literal names the other command it belongs to
(`python -m prep ... --classes`, `make ...`)."""
import ast
import os
import re
from pathlib import Path

import pytest

from eval import __main__ as eval_main
from eval import ensemble, features, predict, views
from models import __main__ as models_main
from prep import __main__ as prep_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
OTHER_COMMAND = re.compile(r"python3? -m |make |torchrun")
EVAL = ["eval/run.py", "eval/plan.py", "models/checkpoints.py", "models/factory.py"]  # what every command that evaluates prints
COMMANDS = {
    "eval": (eval_main.build_parser, ["eval/__main__.py", "eval/cli.py", *EVAL]),
    "eval predict": (predict.build_parser, ["eval/predict.py", *EVAL]),
    "eval features": (features.build_parser, ["eval/features.py", "eval/embedding.py", *EVAL]),
    "eval ensemble": (ensemble.build_parser, ["eval/ensemble.py", "eval/fusion.py", "eval/dump.py"]),
    "eval views": (views.build_parser, ["eval/views.py"]),
    "prep": (prep_main.build_parser, ["prep/__main__.py"]),
    "models": (models_main.build_parser, ["models/__main__.py", "models/checkpoints.py", "models/factory.py"]),
}


def _options(parser) -> set[str]:
    found = set(parser._option_string_actions)
    for action in parser._actions:  # subcommands' parsers
        choices = getattr(action, "choices", None)
        for sub in (choices.values() if isinstance(choices, dict) else ()):
            found |= _options(sub)
    return found


def _literals(path: str):
    """(line, text) of every string literal outside docstrings; an f-string's text parts joined."""
    tree = ast.parse(Path(os.path.join(ROOT, path)).read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            yield node.lineno, "".join(v.value for v in node.values if isinstance(v, ast.Constant))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_a_message_names_is_the_commands(command):
    build, paths = COMMANDS[command]
    known = _options(build())
    wrong = [f"{path}:{line}: {option}" for path in paths for line, text in _literals(path)
             if " " in text and not OTHER_COMMAND.search(text)  # a message, not an option given as a value
             for option in OPTION.findall(text) if option not in known]
    assert not wrong, f"`{command}` prints options it does not have: {wrong}"
