"""The package's modules import one way only: no cycles (imports inside functions count
too), and the library never imports the command line, a layer of its own above it."""

import ast
import os

import mshare

PACKAGE = os.path.dirname(os.path.abspath(mshare.__file__))


def module_files():
    """Every pure-Python module of the package, by dotted name."""
    found = {}
    for root, _, files in os.walk(PACKAGE):
        for file in files:
            if file.endswith(".py"):
                relative = os.path.relpath(os.path.join(root, file), os.path.dirname(PACKAGE))
                name = relative[:-len(".py")].replace(os.sep, ".").removesuffix(".__init__")
                found[name] = os.path.join(root, file)
    return found


def imports_of(own_name, path, modules):
    """The package's modules that the file imports, anywhere in it but under
    ``if TYPE_CHECKING:``; the package root is left out (every module sits below it)."""
    imported = set()
    for node in _outside_type_checking(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # "from a.b import c" imports the module a.b.c if there is one, else names of a.b.
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & set(modules)
            imported.update(submodules or {node.module})
    return {name for name in imported if name in modules and name != "mshare"} - {own_name}


def _outside_type_checking(tree):
    """Every node below ``tree`` but those in the body of an ``if TYPE_CHECKING:``
    (``ast.walk`` queues a node's children before yielding it, so clearing the body as
    it is yielded would not skip them)."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
            for other in child.orelse:
                yield other
                yield from _outside_type_checking(other)
            continue
        yield child
        yield from _outside_type_checking(child)


def import_graph():
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycle_from(graph, start):
    """A path of imports from ``start`` back to itself, or None."""
    stack, seen = [(start, [start])], set()
    while stack:
        module, path = stack.pop()
        for imported in graph[module]:
            if imported == start:
                return path + [start]
            if imported not in seen:
                seen.add(imported)
                stack.append((imported, path + [imported]))
    return None


def test_no_module_imports_itself_through_others():
    graph = import_graph()
    assert {name: cycle_from(graph, name) for name in graph if cycle_from(graph, name)} == {}


def test_the_library_never_imports_the_command_line():
    graph = import_graph()
    command_line = {name for name in graph if name.startswith("mshare.cli")} | {"mshare.__main__"}
    below = {name: sorted(imports & command_line)
             for name, imports in graph.items() if name not in command_line}
    assert {name: imports for name, imports in below.items() if imports} == {}
