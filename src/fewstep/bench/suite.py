"""A bench suite (TOML): the teacher's samplers x schedules x NFE, accelerated settings and students, as rows."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from fewstep.bench.evaluate import EvalSettings, steps_for_nfe
from fewstep.config import build_config, read_toml
from fewstep.core.errors import UserError
from fewstep.core.schedules import SCHEDULES, is_schedule_file, read_schedule_file
from fewstep.models.io import FEWSTEP_JSON, LoadedModel, ModelInfo, load_model, resolve_model_dir
from fewstep.plan import PlanSettings, build_plan
from fewstep.samplers import get_sampler

DEFAULT_SAMPLERS = ("euler", "heun", "dpmpp_2m")
DEFAULT_SCHEDULES = ("karras", "karras_trailing")  # students sample on karras_trailing (docs/distillation.md)
DEFAULT_NFE = (1, 2, 4, 8, 16, 35)
TRANSFORMER_CACHES = ("fbcache:threshold=0.05", "fbcache:threshold=0.1")  # need no profile or fitted coefficients
DEFAULT_CACHES = {  # settings that apply to a backbone, at the teacher's converged sampler and steps
    "UNet2DModel": ("deepcache:interval=2,branch=0", "deepcache:interval=3,branch=0", "encprop:interval=2"),
    "UNet2DConditionModel": ("deepcache:interval=2,branch=0", "deepcache:interval=3,branch=0"),
    **{name: TRANSFORMER_CACHES for name in ("DiTTransformer2DModel", "PixArtTransformer2DModel",
                                             "SD3Transformer2DModel", "FluxTransformer2DModel")},
}
# guidance accelerators on a text-to-image model's CFG: Adaptive Guidance (Castillo et al. 2023), and guidance
# limited to the middle sigmas (Kynkäänniemi et al. 2024, whose interval (0.28, 5.42] was found on EDM2's latents)
TEXT_GUIDANCE = ({"guidance": "adaptive:threshold=0.995"}, {"cfg_interval": [0.28, 5.42]})


@dataclass
class SamplerGrid:
    """Training-free baselines on the teacher: every sampler x schedule x NFE budget."""

    names: list = field(default_factory=lambda: list(DEFAULT_SAMPLERS))
    schedules: list = field(default_factory=lambda: list(DEFAULT_SCHEDULES))
    nfe: list = field(default_factory=lambda: list(DEFAULT_NFE))
    # Heun-type samplers under 3 steps are degenerate: the last step to sigma = 0 is plain Euler, so 2 steps are one
    # Heun step and an Euler step from a large sigma (a near-noise grid at NFE 3); leave them out unless asked for
    skip_degenerate: bool = True


@dataclass
class AcceleratorRow:
    """One accelerated setting of the teacher; empty fields take the teacher's converged setting."""

    cache: str = ""  # accelerator spec, e.g. "deepcache:interval=3,branch=0" (docs/acceleration.md)
    guidance: str = ""  # guidance spec on top of CFG, e.g. "adaptive:threshold=0.99"
    cfg_scale: float | None = None  # None = the teacher's recorded (or default) scale; 1 = no guidance
    cfg_interval: list = field(default_factory=list)  # [LO, HI] or [] (guide at every sigma)
    sampler: str = ""
    steps: int = 0
    schedule: str = ""  # a formula, or a searched schedule .json (it fixes the steps and the sampler)


@dataclass
class StudentEntry:
    """A student model folder from `fewstep distill`, at these step counts ([] = those it was distilled for)."""

    path: str = ""
    steps: list = field(default_factory=list)


@dataclass
class Suite:
    """What `fewstep bench` measures: one teacher, its baselines, accelerated settings and students, on one ruler."""

    teacher: str = ""
    n: int = 2000
    seed: int = 0
    timing_batch: int = 64
    batch_size: int = 256
    dataset: str = ""  # "" = the teacher's recorded dataset
    prompts: str = ""  # a text-to-image teacher's prompt set (FILE | captions:seen | ...); "" = its default
    device: str = "cpu"
    samplers: SamplerGrid | None = None  # None: no sampler baselines
    accelerators: list[AcceleratorRow] = field(default_factory=list)
    students: list[StudentEntry] = field(default_factory=list)


@dataclass(frozen=True)
class BenchRow:
    """One planned row: the model folder, how to evaluate it, its role and the family it is plotted with."""

    model: Path
    settings: EvalSettings
    role: str  # converged | sampler | accelerator | student
    family: str


TABLES = {"samplers": SamplerGrid, "accelerators": AcceleratorRow, "students": StudentEntry}


def _table(cls: type, layer: object, where: str):
    if not isinstance(layer, dict):
        raise UserError(f"{where} must be a table of keys, got {layer!r}")
    return build_config(cls, layer, where=where)


def read_suite(path: str | Path) -> Suite:
    """Parse a suite TOML file; an unknown key or a wrong type is a one-line UserError naming the table."""
    raw = read_toml(path)
    top = {k: v for k, v in raw.items() if k not in TABLES}
    suite = _table(Suite, top, str(path))
    for key, value in ((k, raw[k]) for k in ("accelerators", "students") if k in raw):
        if not isinstance(value, list):
            raise UserError(f"{path}: write [[{key}]] (an array of tables), not [{key}]")
        setattr(suite, key, [_table(TABLES[key], v, f"{path} [[{key}]]") for v in value])
    if "samplers" in raw:
        suite.samplers = _table(SamplerGrid, raw["samplers"], f"{path} [samplers]")
    return suite


def _teacher_of(info: ModelInfo) -> Path | None:
    return Path(info.teacher).resolve() if info.teacher else None


def find_students(teacher: str | Path, folder: str | Path) -> list[StudentEntry]:
    """Every model folder under `folder` whose fewstep.json names `teacher` as its teacher."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"--students folder {root} does not exist")
    teacher_dir = resolve_model_dir(teacher).resolve()
    return [StudentEntry(str(p.parent)) for p in sorted(root.rglob(FEWSTEP_JSON))
            if _teacher_of(ModelInfo.from_json(p)) == teacher_dir]


def default_suite(teacher: str | Path) -> Suite:
    """Everything fewstep has for a teacher: samplers x schedules x NFE and the caches that fit its backbone."""
    model = load_model(teacher)
    caches = DEFAULT_CACHES.get(model.info.network_class, ())
    guidance = TEXT_GUIDANCE if model.prompt_encoder is not None else ()
    return Suite(teacher=str(teacher), samplers=SamplerGrid(),
                 accelerators=[*(AcceleratorRow(cache=c) for c in caches), *(AcceleratorRow(**g) for g in guidance)])


def resolve_suite(path: str | None = None, teacher: str | None = None, students: str | None = None,
                  n: int | None = None, device: str | None = None, prompts: str | None = None,
                  seed: int | None = None) -> Suite:
    """The suite file (or the default suite) with the command line's teacher, students folder, n, device, prompt
    set and seed."""
    if path is None and not teacher:
        raise UserError("fewstep bench needs --teacher (or a --suite file that names one)")
    suite = read_suite(path) if path else default_suite(teacher)
    suite = replace(suite, teacher=teacher or suite.teacher, n=suite.n if n is None else n,
                    device=device or suite.device, prompts=prompts or suite.prompts,
                    seed=suite.seed if seed is None else seed)
    if not suite.teacher:
        raise UserError(f"{path} names no teacher; add teacher = \"runs/...\" or pass --teacher")
    if students:
        suite.students = [*suite.students, *find_students(suite.teacher, students)]
    return suite


def _check(suite: Suite) -> None:
    if suite.n < 2 or suite.timing_batch < 1 or suite.batch_size < 1:
        raise UserError(f"suite: n must be at least 2 and timing_batch, batch_size at least 1, got n = {suite.n}, "
                        f"timing_batch = {suite.timing_batch}, batch_size = {suite.batch_size}")
    grid = suite.samplers
    if grid is not None:
        for name in grid.names:
            get_sampler(name)
        bad = [s for s in grid.schedules if s not in SCHEDULES]
        bad += [v for v in grid.nfe if not isinstance(v, int) or v < 1]
        if bad:
            raise UserError(f"suite [samplers]: {bad[0]!r} is not a schedule ({', '.join(SCHEDULES)}) or an NFE >= 1")
    for a in suite.accelerators:
        if len(a.cfg_interval) not in (0, 2):
            raise UserError(f"suite [[accelerators]]: cfg_interval takes two sigmas [LO, HI], got {a.cfg_interval}")


def _settings(suite: Suite, sampler: str, schedule: str, steps: int, **extra) -> EvalSettings:
    return EvalSettings(sampler=sampler, schedule=schedule, steps=steps, n=suite.n, seed=suite.seed,
                        batch_size=suite.batch_size, timing_batch=suite.timing_batch, dataset=suite.dataset or None,
                        prompts=suite.prompts or None, device=suite.device, **extra)


def _accelerated(suite: Suite, a: AcceleratorRow, converged: dict) -> EvalSettings:
    if is_schedule_file(a.schedule):
        searched = read_schedule_file(a.schedule)
        sampler, steps = a.sampler or searched["sampler"], len(searched["sigmas"]) - 1
    else:
        sampler, steps = a.sampler or converged["name"], a.steps or converged["steps"]
        if a.schedule and a.schedule not in SCHEDULES:
            raise UserError(f"suite [[accelerators]]: schedule {a.schedule!r} is not one of {', '.join(SCHEDULES)} "
                            "or a searched schedule .json")
    get_sampler(sampler)
    return _settings(suite, sampler, a.schedule or converged["schedule"], steps, cache=a.cache or None,
                     guidance=a.guidance or None, cfg_scale=a.cfg_scale,
                     cfg_interval=tuple(a.cfg_interval) if a.cfg_interval else None)


def _accelerator_family(a: AcceleratorRow) -> str:
    parts = [":".join(spec.split(":")[:2 if spec.startswith("peer:") else 1]) for spec in (a.cache, a.guidance) if spec]
    parts += ["searched schedule"] * is_schedule_file(a.schedule) + ["cfg interval"] * bool(a.cfg_interval)
    return " + ".join(parts) or (f"cfg {a.cfg_scale:g}" if a.cfg_scale is not None else "recorded cfg")


def _try_on(teacher: LoadedModel, a: AcceleratorRow) -> None:
    """Fail now, not an hour into the bench, on a cache or guidance spec that does not apply to this teacher."""
    build_plan(teacher, PlanSettings(cfg_scale=a.cfg_scale, cfg_interval=tuple(a.cfg_interval) or None,
                                     guidance=a.guidance or None, cache=a.cache or None)).check(teacher)


def _student_rows(suite: Suite, entry: StudentEntry, teacher: Path) -> list[BenchRow]:
    model = load_model(entry.path)
    info = model.info
    if _teacher_of(info) != teacher:
        raise UserError(f"{entry.path} is not a student of the suite's teacher {teacher} (its teacher: {info.teacher})")
    distilled = info.extra.get("distill", {})
    steps = entry.steps or distilled.get("steps") or [info.sampler.get("steps", 1)]
    if not all(isinstance(k, int) and k >= 1 for k in steps):
        raise UserError(f"suite [[students]] {entry.path}: steps takes step counts >= 1, got {steps}")
    family = f"{distilled.get('method', 'student')} student"
    sampler, schedule = info.sampler.get("name", "heun"), info.sampler.get("schedule", "karras")
    return [BenchRow(model.path, _settings(suite, sampler, schedule, k), "student", family) for k in steps]


def is_degenerate(sampler: str, steps: int) -> bool:
    """A second-order (Heun-type) sampler with fewer than 3 steps: mostly its final Euler step."""
    return get_sampler(sampler).nfe(2) == 3 and steps < 3


def suite_rows(suite: Suite) -> list[BenchRow]:
    """The rows of a suite, the teacher's converged setting first; each with explicit sampler, schedule and steps."""
    _check(suite)
    teacher = load_model(suite.teacher)
    recorded = teacher.info.sampler
    converged = {"name": recorded.get("name", "heun"), "schedule": recorded.get("schedule", "karras"),
                 "steps": recorded.get("steps", 18)}
    rows = [BenchRow(teacher.path, _settings(suite, converged["name"], converged["schedule"], converged["steps"]),
                     "converged", "teacher (converged)")]
    grid = suite.samplers
    if grid is not None:
        rows += [BenchRow(teacher.path, _settings(suite, name, schedule, steps_for_nfe(name, nfe)), "sampler",
                          f"{name} ({schedule})")
                 for name in grid.names for schedule in grid.schedules for nfe in grid.nfe
                 if not (grid.skip_degenerate and is_degenerate(name, steps_for_nfe(name, nfe)))]
    for a in suite.accelerators:
        _try_on(teacher, a)
        rows.append(BenchRow(teacher.path, _accelerated(suite, a, converged), "accelerator", _accelerator_family(a)))
    for entry in suite.students:
        if not entry.path or not Path(entry.path).exists():
            raise UserError(f"student folder {entry.path!r} does not exist")
        rows += _student_rows(suite, entry, teacher.path.resolve())
    return rows

