"""The import graph of the repo, read from the source: entry scripts only import, libraries never import an entry
script (tests neither: they run entry points as subprocesses), tools import only library modules, no library
imports itself back through others, and only a tool puts the repo root on sys.path."""
import ast
import glob
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Entry points: run as commands (hubconf by paddle.hub.load), never imported. compat.py is a library with a command
# of its own (run.sh runs it before paddle is known to work).
ENTRY_SCRIPTS = {'main_single_gpu', 'main_multi_gpu', 'predict', 'hubconf'} | {
    'tools.' + os.path.splitext(os.path.basename(path))[0] for path in glob.glob(os.path.join(ROOT, 'tools', '*.py'))}
LIBRARY = {os.path.splitext(os.path.basename(path))[0] for path in glob.glob(os.path.join(ROOT, '*.py'))} - ENTRY_SCRIPTS
TOOL_NAMES = {name.split('.', 1)[1] for name in ENTRY_SCRIPTS if name.startswith('tools.')}


def source_files(folder=''):
    """{module name: path} of the repo's .py files in folder ('' the root, 'tools', 'tests')."""
    prefix = folder + '.' if folder else ''
    return {prefix + os.path.splitext(os.path.basename(path))[0]: path
            for path in sorted(glob.glob(os.path.join(ROOT, folder, '*.py')))}


def imported(path):
    """The repo modules a file imports anywhere in it (top level or inside functions), as module names: a library
    module, 'tools.NAME' (also for `from tools import NAME` and a tool found on a sys.path entry as NAME) or
    'tests.NAME'."""
    names = set()
    for node in ast.walk(ast.parse(open(path, encoding='utf-8').read())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module in ('tools', 'tests'):
                names.update(f'{node.module}.{alias.name}' for alias in node.names)
    repo = set()
    for name in names:
        if name in LIBRARY | ENTRY_SCRIPTS or name.split('.')[0] in ('tools', 'tests') and name not in ('tools', 'tests'):
            repo.add(name)
        elif name in TOOL_NAMES and not path.startswith(os.path.join(ROOT, 'tests')):
            repo.add('tools.' + name)  # `import benchmark` beside it in tools/
    return repo


def sys_path_inserts(path):
    """The sys.path.insert calls in a file's code (not in strings: test scripts run in subprocesses carry theirs)."""
    return [node for node in ast.walk(ast.parse(open(path, encoding='utf-8').read()))
            if isinstance(node, ast.Call) and ast.unparse(node.func) == 'sys.path.insert']


ALL_FILES = {**source_files(), **source_files('tools'), **source_files('tests')}


@pytest.mark.parametrize('module', sorted(ALL_FILES))
def test_no_module_imports_an_entry_script(module):
    assert not imported(ALL_FILES[module]) & ENTRY_SCRIPTS


@pytest.mark.parametrize('tool', sorted(source_files('tools')))
def test_tools_import_only_library_modules(tool):
    assert imported(ALL_FILES[tool]) <= LIBRARY


def test_library_modules_import_each_other_without_a_cycle():
    graph = {module: imported(path) & LIBRARY for module, path in source_files().items() if module in LIBRARY}
    done, path = set(), []

    def visit(module):
        if module in path:
            raise AssertionError(' -> '.join(path[path.index(module):] + [module]))
        if module not in done:
            path.append(module)
            for other in sorted(graph[module]):
                visit(other)
            path.pop()
            done.add(module)
    for module in sorted(graph):
        visit(module)


@pytest.mark.parametrize('module', sorted(ALL_FILES))
def test_only_a_tool_puts_the_repo_root_on_sys_path_in_one_line(module):
    inserts = sys_path_inserts(ALL_FILES[module])
    if module.startswith('tools.') or module in ('hubconf', 'tests.conftest'):  # hub: paddle.hub's own loading
        assert len(inserts) <= 1
    else:
        assert not inserts
