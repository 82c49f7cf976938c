"""Import rules, read from the source: third-party imports are declared, model/ stands apart from stream/, the
runtime never imports training or evaluation code, a pipeline step never imports a later one."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = ("stream", "model", "clients", "bench", "tests")

# Training, evaluation and vocabulary building: everything under these packages.
TRAINING = ("model/training/", "stream/evaluate.py")
# What a live call runs (file globs; a folder: everything under it).
RUNTIME = (
    "stream/serve/",
    "stream/session.py",
    "stream/pipeline.py",
    "stream/frames.py",
    "stream/speech/",
    "stream/transcribe/",
    "stream/faces/",
    "stream/emotion/",
    "stream/publish/",
    "model/settings.py",
    "model/audio/",
    "model/face/",
    "model/emotion/",
    "model/microemo/",
    "model/llm/",
)
# The pipeline's steps in chain order: a step imports only the steps before it (and the shared top level).
STEPS = ("speech", "transcribe", "faces", "emotion", "publish", "serve")
NOT_RUNTIME: tuple[str, ...] = ()  # globs under RUNTIME that a live call does not run


@dataclass(frozen=True, slots=True)
class Import:
    module: str  # absolute dotted name, e.g. "stream.faces.analysis" or "numpy.linalg"
    line: int
    optional: bool  # inside a try whose except catches ImportError: the code runs without it


def imports_of(path: Path) -> list[Import]:
    """Every import statement of a file, relative ones made absolute, with `from X import Y` also naming X.Y
    (Y may be a submodule)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, optional: bool) -> None:
        if isinstance(node, ast.Try):
            catches_import_error = any(_catches_import_error(h.type) for h in node.handlers)
            for child in node.body:
                visit(child, optional or catches_import_error)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, optional)
            return
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, node.lineno, optional) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            found.append(Import(base, node.lineno, optional))
            found.extend(Import(f"{base}.{alias.name}", node.lineno, optional) for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child, optional)

    visit(ast.parse(path.read_text(), filename=str(path)), False)
    return found


def _catches_import_error(handler: ast.expr | None) -> bool:
    names = {"ImportError", "ModuleNotFoundError"}
    if handler is None:  # a bare except
        return True
    if isinstance(handler, ast.Tuple):
        return any(_catches_import_error(e) for e in handler.elts)
    return isinstance(handler, ast.Name) and handler.id in names


def project_files(*packages: str) -> Iterator[Path]:
    for package in packages:
        yield from sorted((ROOT / package).rglob("*.py"))


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# -- declared dependencies ------------------------------------------------------------------------------------


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def requirement_names(requirements: list[str]) -> set[str]:
    names = set()
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9._-]+", requirement.strip())
        assert name is not None, f"pyproject.toml: cannot read the requirement {requirement!r}"
        names.add(normalized(name.group(0)))
    return names


@cache
def declared() -> tuple[set[str], set[str]]:
    """Distribution names in [project] dependencies, and in any optional extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for group in project.get("optional-dependencies", {}).values() for r in group]
    return requirement_names(project["dependencies"]), requirement_names(extras)


@cache
def import_names() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


@cache
def distributions_of(top_level: str) -> set[str]:
    """Installed distributions that provide an import name; its own name when none is installed."""
    names = set(import_names().get(top_level, []))
    if not names:  # a compiled module alone (parselmouth.cpython-311-....so) is missed by the mapping above
        for dist in importlib.metadata.distributions():
            files = dist.files or []
            if any(len(f.parts) == 1 and f.name.split(".")[0] == top_level for f in files):
                names.add(dist.metadata["Name"])
    return {normalized(n) for n in names} or {normalized(top_level)}


def is_third_party(module: str) -> bool:
    top = module.split(".")[0]
    return (
        bool(top)
        and top != "__future__"
        and top not in sys.stdlib_module_names
        and top not in PROJECT_PACKAGES
    )


def test_every_third_party_import_is_declared_in_pyproject() -> None:
    required, extras = declared()
    missing = []
    for path in project_files(*PROJECT_PACKAGES):
        for imported in imports_of(path):
            top = imported.module.split(".")[0]
            if is_third_party(top) and not distributions_of(top) & (required | extras):
                provided_by = ", ".join(sorted(distributions_of(top)))
                missing.append(f"{relative(path)}:{imported.line} imports {top} (from {provided_by})")
    assert missing == [], "declare these in pyproject.toml:\n" + "\n".join(sorted(set(missing)))


def test_the_service_needs_no_extra_beyond_its_own_dependencies() -> None:
    """stream/ and model/ import only [project] dependencies, except optional backends (import in a try)."""
    required, _ = declared()
    outside = []
    for path in project_files("stream", "model"):
        for imported in imports_of(path):
            top = imported.module.split(".")[0]
            if (
                is_third_party(imported.module)
                and not imported.optional
                and not distributions_of(top) & required
            ):
                outside.append(f"{relative(path)}:{imported.line} imports {top}")
    assert outside == [], "move to [project] dependencies:\n" + "\n".join(sorted(set(outside)))


# -- the project's own modules --------------------------------------------------------------------------------


@cache
def module_files() -> dict[str, Path]:
    """Dotted name → file of every module of stream/ and model/ (packages by their __init__.py)."""
    modules = {}
    for path in project_files("stream", "model"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def loaded_by(module: str) -> set[str]:
    """The project modules that importing `module` runs: it and its parent packages."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & module_files().keys()


@cache
def graph() -> dict[str, set[str]]:
    """Module → the project modules its imports run (imports inside functions included: they run too)."""
    return {
        name: {m for imported in imports_of(path) for m in loaded_by(imported.module)} - {name}
        for name, path in module_files().items()
    }


def import_chain(start: str, targets: set[str]) -> list[str] | None:
    """The shortest chain of imports from `start` into one of `targets`, or None."""
    paths = {start: [start]}
    queue = [start]
    while queue:
        module = queue.pop(0)
        parents = loaded_by(module) - {module}  # importing a module runs its packages first
        for reached in sorted(graph().get(module, set()) | parents):
            if reached not in paths:
                paths[reached] = [*paths[module], reached]
                if reached in targets:
                    return paths[reached]
                queue.append(reached)
    return None


def modules_matching(patterns: tuple[str, ...]) -> set[str]:
    files = {p for pattern in patterns for p in ROOT.glob(pattern) if p.suffix == ".py"}
    files |= {p for pattern in patterns if pattern.endswith("/") for p in (ROOT / pattern).rglob("*.py")}
    return {name for name, path in module_files().items() if path in files}


def test_model_never_imports_stream() -> None:
    offending = [
        f"{relative(path)}:{imported.line} imports {imported.module}"
        for path in project_files("model")
        for imported in imports_of(path)
        if imported.module == "stream" or imported.module.startswith("stream.")
    ]
    assert offending == []


def test_the_runtime_never_imports_training_or_evaluation_code() -> None:
    training = modules_matching(TRAINING)
    runtime = modules_matching(RUNTIME) - modules_matching(NOT_RUNTIME)
    assert training and {"stream.serve.server", "stream.session", "model.emotion.estimator"} <= runtime
    chains = [chain for start in sorted(runtime) if (chain := import_chain(start, training)) is not None]
    assert chains == [], "runtime modules that import training code:\n" + "\n".join(
        " → ".join(c) for c in chains
    )


def test_a_step_never_imports_a_later_step() -> None:
    offending = []
    for position, step in enumerate(STEPS):
        later = STEPS[position + 1 :]
        for path in project_files(f"stream/{step}"):
            for imported in imports_of(path):
                parts = imported.module.split(".")
                if parts[0] == "stream" and len(parts) > 1 and parts[1] in later:
                    offending.append(f"{relative(path)}:{imported.line} imports {imported.module}")
    assert offending == []


def test_the_shared_top_level_never_imports_a_step() -> None:
    """frames, pipeline, config, clock, metrics, overload and events are what every step builds on."""
    shared = ("frames", "pipeline", "config", "clock", "metrics", "overload", "events", "threads")
    offending = [
        f"{relative(path)}:{imported.line} imports {imported.module}"
        for name in shared
        for path in [ROOT / "stream" / f"{name}.py"]
        for imported in imports_of(path)
        if imported.module.split(".")[:2] in [["stream", step] for step in STEPS]
    ]
    assert offending == []


def test_no_two_modules_share_a_file_name() -> None:
    """A file's name says which module it is: `heads.py` in three places made every stack trace a puzzle."""
    seen: dict[str, list[str]] = {}
    for path in project_files("stream", "model"):
        if path.name != "__init__.py":
            seen.setdefault(path.name, []).append(relative(path))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}
