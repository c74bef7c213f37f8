"""Every call of a function borrowed from diffusers names its arguments, by the installed diffusers' parameter names.

diffusers is pinned only `>=0.35`, and the pipelines ship to the Hub as remote code that runs on whatever diffusers a
user has: a reordered signature would silently feed a positional call the wrong arguments, while a renamed parameter
makes a keyword call fail loudly, and here first.

Borrowed: a function imported from a diffusers module (`retrieve_timesteps`, `randn_tensor`, ...), a plain or static
method of a diffusers class called on the class (`FluxFillPipeline._unpack_latents(...)`), and a class attribute
bound from one (`prepare_latents = FluxFillPipeline.prepare_latents`), called as `self.prepare_latents(...)`. Such a
call passes nothing by position but its receiver: the `self` of `self.name(...)`, or a `self` passed explicitly to an
unbound method. Every keyword must be a parameter of the installed object's `inspect.signature` (unless it takes
`**kwargs`), and every required parameter must be given (unless the call splats `**`).

Not borrowed: the public API of diffusers objects (constructors, `from_pretrained`, a component's forward or
`self.scheduler.step(noise_pred, t, latents)`), whose leading tensors are diffusers' documented convention. Calls on
the components get one rule: no bare literal (`0.0`, `False`, `None`, ...) as a positional argument.
"""

import ast
import importlib
import inspect
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import ROOT


# Names under which the code holds diffusers components (`self.scheduler`, `vae`, ...), for the literal rule.
COMPONENTS = {"vae", "unet", "transformer", "scheduler", "noise_scheduler", "image_processor"}
# The borrowed functions the sources must call (so the scan cannot pass by finding nothing).
EXPECTED_CALLS = {
    "prepare_latents",
    "prepare_mask_latents",
    "prepare_extra_step_kwargs",
    "get_timesteps",
    "retrieve_timesteps",
    "calculate_shift",
    "_unpack_latents",
    "randn_tensor",
    "normalize",
}


def source_files() -> list[Path]:
    folders = ("asuka", "training", "benchmarks")
    return sorted([*(path for folder in folders for path in (ROOT / folder).rglob("*.py")), ROOT / "app.py"])


def diffusers_names(tree: ast.Module) -> dict[str, object]:
    """Local name -> installed diffusers object, for every diffusers import of a file (function-level ones too)."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] == "diffusers":
            module = importlib.import_module(node.module)
            for alias in node.names:
                value = getattr(module, alias.name, None)
                if value is None:
                    value = importlib.import_module(f"{node.module}.{alias.name}")
                names[alias.asname or alias.name] = value
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "diffusers":  # `import diffusers.x` binds `diffusers`
                    names[alias.asname or "diffusers"] = importlib.import_module(
                        alias.name if alias.asname else "diffusers"
                    )
    return names


def diffusers_value(node: ast.expr, names: dict[str, object]) -> object | None:
    """The installed diffusers object an expression (`FluxFillPipeline`, `diffusers.utils`) names, else None."""
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = diffusers_value(node.value, names)
        return None if owner is None else getattr(owner, node.attr, None)
    return None


class Borrowed:
    """A diffusers function as one call site sees it: `bound` when the call binds its first parameter (`self`)."""

    def __init__(self, function: Callable, bound: bool, explicit_receiver: bool = False):
        self.function = function
        self.parameters = list(inspect.signature(function).parameters.values())[1 if bound else 0 :]
        self.explicit_receiver = explicit_receiver  # an unbound method called on its class: `self` comes first

    def problems(self, call: ast.Call, spelt: str) -> list[str]:
        found = []
        positional = call.args
        if (
            self.explicit_receiver
            and positional
            and isinstance(positional[0], ast.Name)
            and positional[0].id == "self"
        ):
            positional, parameters = positional[1:], self.parameters[1:]
        else:
            parameters = self.parameters
        where = f"line {call.lineno}: {spelt}(...)"
        if positional:
            found.append(f"{where} passes {len(positional)} argument(s) by position; pass them by name")
        named = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        takes_any = any(p.kind == p.VAR_KEYWORD for p in parameters)
        given = {keyword.arg for keyword in call.keywords}
        signature = f"{self.function.__module__}.{self.function.__qualname__}{inspect.signature(self.function)}"
        for name in sorted(given - {None} - named):
            if not takes_any:
                found.append(f"{where}: `{name}` is not a parameter of the installed {signature}")
        if None not in given and not positional:
            missing = [p.name for p in parameters if p.name in named and p.default is p.empty and p.name not in given]
            if missing:
                found.append(f"{where} misses the required {missing} of the installed {signature}")
        return found


def called_on_class(node: ast.Attribute, names: dict[str, object]) -> Borrowed | None | str:
    """`DiffusersClass.attr`: a plain or static method (Borrowed), a missing attribute (a problem), else None."""
    owner = diffusers_value(node.value, names)
    if not inspect.isclass(owner):
        return None
    static = inspect.getattr_static(owner, node.attr, None)
    if static is None:
        return f"`{owner.__name__}.{node.attr}` is not in the installed diffusers"
    if isinstance(static, staticmethod):
        return Borrowed(static.__func__, bound=False)
    if inspect.isfunction(static):
        return Borrowed(static, bound=False, explicit_receiver=True)
    return None  # a classmethod (`from_pretrained`, ...) or a plain attribute: the class's public API


def class_bindings(cls: ast.ClassDef, names: dict[str, object]) -> tuple[dict[str, Borrowed], list[str]]:
    """The class attributes bound from diffusers functions (name -> Borrowed, as `self.name` calls it), and the
    problems of the bindings themselves."""
    bindings, problems = {}, []
    for statement in cls.body:
        if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1):
            continue
        target, value = statement.targets[0], statement.value
        wrapped = isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "staticmethod"
        source = value.args[0] if wrapped else value
        if not (isinstance(target, ast.Name) and isinstance(source, ast.Attribute)):
            continue
        borrowed = called_on_class(source, names)
        if isinstance(borrowed, str):
            problems.append(f"line {statement.lineno}: {borrowed}")
        elif borrowed is not None:
            is_static = not borrowed.explicit_receiver
            if is_static != wrapped:
                kind = "a staticmethod" if is_static else "a method"
                problems.append(
                    f"line {statement.lineno}: `{target.id}` binds {kind} of diffusers "
                    f"{'without' if is_static else 'in'} `staticmethod(...)`"
                )
            bindings[target.id] = Borrowed(borrowed.function, bound=not is_static)
    return bindings, problems


def literal_positional(call: ast.Call) -> bool:
    """A call on a diffusers component (`self.scheduler.step(...)`, `vae.decode(...)`) with a bare literal by
    position."""

    def is_component(node: ast.expr) -> bool:
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            return node.attr in COMPONENTS
        return isinstance(node, ast.Name) and node.id in COMPONENTS

    func = call.func
    on_component = is_component(func) or (isinstance(func, ast.Attribute) and is_component(func.value))
    return on_component and any(isinstance(argument, ast.Constant) for argument in call.args)


def check_source(source: str) -> tuple[list[str], set[str]]:
    """(problems, names of the borrowed functions called) of one file's source."""
    tree = ast.parse(source)
    names = diffusers_names(tree)
    problems, called = [], set()
    bindings_of = {}  # id(call) -> the bindings of its innermost class
    for cls in ast.walk(tree):
        if isinstance(cls, ast.ClassDef):
            bindings, binding_problems = class_bindings(cls, names)
            problems += binding_problems
            for node in ast.walk(cls):
                if isinstance(node, ast.Call):
                    bindings_of[id(node)] = bindings
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call):
            continue
        func, borrowed = call.func, None
        if isinstance(func, ast.Name) and inspect.isfunction(names.get(func.id)):
            borrowed, spelt = Borrowed(names[func.id], bound=False), func.id
        elif isinstance(func, ast.Attribute):
            spelt = ast.unparse(func)
            if isinstance(func.value, ast.Name) and func.value.id == "self":
                borrowed = bindings_of.get(id(call), {}).get(func.attr)
            else:
                borrowed = called_on_class(func, names)
                if borrowed is None and inspect.isfunction(diffusers_value(func, names)):
                    borrowed = Borrowed(diffusers_value(func, names), bound=False)  # `diffusers.utils.f(...)`
        if isinstance(borrowed, str):
            problems.append(f"line {call.lineno}: {borrowed}")
        elif borrowed is not None:
            called.add(spelt.rsplit(".", 1)[-1])
            problems += borrowed.problems(call, spelt)
        if literal_positional(call):
            problems.append(f"line {call.lineno}: {ast.unparse(call.func)}(...) passes a bare literal by position")
    return problems, called


def test_every_borrowed_diffusers_call_names_its_arguments():
    problems, called = [], set()
    for path in source_files():
        found, names = check_source(path.read_text())
        problems += [f"{path.relative_to(ROOT)} {problem}" for problem in found]
        called |= names
    assert not problems, "Borrowed diffusers calls to fix:\n" + "\n".join(problems)
    assert EXPECTED_CALLS <= called, sorted(EXPECTED_CALLS - called)


SD_CLASS = """
from diffusers import StableDiffusionInpaintPipeline
from diffusers.pipelines.flux.pipeline_flux_fill import FluxFillPipeline


class Pipe:
    prepare_extra_step_kwargs = StableDiffusionInpaintPipeline.prepare_extra_step_kwargs
    get_timesteps = FluxFillPipeline.get_timesteps
    _pack_latents = staticmethod(FluxFillPipeline._pack_latents)

    def run(self, generator, noise, t, latents):
        {line}
"""


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("self.prepare_extra_step_kwargs(generator, 0.0)", "passes 2 argument(s) by position"),
        ("self.prepare_extra_step_kwargs(generator=generator, seed=0)", "`seed` is not a parameter of the installed"),
        ("self.get_timesteps(num_inference_steps=2, device='cpu')", "misses the required ['strength']"),
        ("self._pack_latents(latents, 1, 4, 8, 8)", "passes 5 argument(s) by position"),
        ("FluxFillPipeline._unpack_latents(latents, 8, 8, 8)", "passes 4 argument(s) by position"),
        ("FluxFillPipeline._no_such_method(latents=latents)", "`FluxFillPipeline._no_such_method` is not in the"),
        ("StableDiffusionInpaintPipeline.prepare_extra_step_kwargs(self, generator, 0.0)", "passes 2 argument"),
        ("self.scheduler.step(noise, t, latents, 0.0)", "self.scheduler.step(...) passes a bare literal"),
    ],
)
def test_checker_catches_a_planted_positional_or_unknown_argument(line, expected):
    problems, _ = check_source(SD_CLASS.format(line=line))
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from diffusers.utils.torch_utils import randn_tensor\nrandn_tensor((1, 4))\n", "randn_tensor(...) passes 1"),
        (
            "from diffusers.pipelines.flux.pipeline_flux_fill import calculate_shift\ncalculate_shift(256)\n",
            "calculate_shift(...) passes 1",
        ),
        ("import diffusers\ndiffusers.utils.make_image_grid([], 1, 1)\n", "make_image_grid(...) passes 3"),
        (
            "from diffusers import FluxFillPipeline\nclass Pipe:\n    _pack = FluxFillPipeline._pack_latents\n",
            "`_pack` binds a staticmethod of diffusers without `staticmethod(...)`",
        ),
    ],
)
def test_checker_catches_module_functions_and_wrong_bindings(source, expected):
    problems, _ = check_source(source)
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize(
    ("line", "borrowed"),
    [
        ("self.prepare_extra_step_kwargs(generator=generator, eta=0.0)", {"prepare_extra_step_kwargs"}),
        ("self.get_timesteps(num_inference_steps=2, strength=1.0, device='cpu')", {"get_timesteps"}),
        (
            "StableDiffusionInpaintPipeline.prepare_extra_step_kwargs(self, generator=generator, eta=0.0)",
            {"prepare_extra_step_kwargs"},
        ),
        ("self.scheduler.step(noise, t, latents, return_dict=False)", set()),  # the scheduler's public API
    ],
)
def test_checker_accepts_keyword_calls_and_the_receiver(line, borrowed):
    assert check_source(SD_CLASS.format(line=line)) == ([], borrowed)
