"""The package's structure: names of attention kinds, applications,
tasks and datasets are listed by their registries alone.

Any other module that wrote a literal list, tuple, set or dict of two or
more such names would be a second table that a new kind, backbone or task
would have to be added to by hand.
"""

import ast
import os

from keras_coordatt.applications.registry import application_names
from keras_coordatt.layers.registry import attention_names
from keras_coordatt.training.dataset_registry import dataset_names
from keras_coordatt.training.tasks import task_names

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "keras_coordatt")
REGISTRIES = {
    os.path.join("layers", "registry.py"),
    os.path.join("applications", "registry.py"),
    os.path.join("training", "tasks.py"),
    os.path.join("training", "dataset_registry.py"),
}


def _literal_strings(node):
    """The string constants a collection literal lists (a dict's keys)."""
    if isinstance(node, ast.Dict):
        items = node.keys
    elif isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = node.elts
    else:
        return []
    return [item.value for item in items
            if isinstance(item, ast.Constant) and isinstance(item.value, str)]


def _tables(path, kinds):
    """`(line, kind, names)` of each literal that lists two names or more
    of one kind."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    found = []
    for node in ast.walk(tree):
        strings = _literal_strings(node)
        for kind, names in kinds.items():
            listed = sorted(set(strings) & names)
            if len(listed) >= 2:
                found.append((node.lineno, kind, listed))
    return found


def _package_files():
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, PACKAGE), path


def test_only_the_registries_list_names():
    kinds = {
        "attention": set(attention_names()),
        "application": set(application_names()),
        "task": set(task_names()),
        "dataset": set(dataset_names()),
    }
    assert all(len(names) >= 2 for names in kinds.values()), kinds
    found = {}
    for relative, path in _package_files():
        if relative in REGISTRIES:
            continue
        tables = _tables(path, kinds)
        if tables:
            found[relative] = tables
    assert not found, found


def test_the_check_finds_a_table(tmp_path):
    """The check itself: a module with a second table is found."""
    module = tmp_path / "module.py"
    module.write_text(
        'TWINS = {"ca": 1, "se": 2}\nOK = ("ca",)\n'
        'TASKS = ["classification", "detection"]\n')
    kinds = {"attention": {"ca", "se", "cbam"},
             "task": {"classification", "detection"}}
    assert _tables(str(module), kinds) == [
        (1, "attention", ["ca", "se"]),
        (3, "task", ["classification", "detection"]),
    ]
