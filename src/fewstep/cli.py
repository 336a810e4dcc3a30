"""fewstep's command line: a thin layer over functions a user can import. Mistakes exit 2 with one line.

Subcommands are built lazily: `fewstep --help` and `--version` import nothing heavy, and a subcommand's flags are
generated from its config dataclasses' field metadata (help text written once, beside the field).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Callable


def _add_config_flags(parser: argparse.ArgumentParser, field_list: list) -> None:
    """One --flag per config field, its help from the field's metadata."""
    from fewstep.config import help_of

    for f in field_list:
        default = f.default if f.default is not MISSING else f.default_factory()
        text = help_of(f) or f.name.replace("_", " ")
        if "(default" not in text:  # a help that states its own default keeps only that one
            text += f" (default: the preset's, else {default!r})" if default not in ("", None) else \
                " (default: the preset's)"
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                            metavar=type(default).__name__.upper(), help=text)


def _add_run_flags(parser: argparse.ArgumentParser, out_help: str, field_list: list) -> None:
    """--out, --config, --resume, --dry-run and one flag per config field: what every training command takes."""
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--config", help="TOML file of config fields; flags override it")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config as TOML and exit")
    _add_config_flags(parser, field_list)
    parser.set_defaults(config_fields=[f.name for f in field_list])


def _overrides(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in args.config_fields if getattr(args, name, None) is not None}


def cmd_train(args: argparse.Namespace) -> int:
    from fewstep.config import to_toml
    from fewstep.train.teacher import resolve_train_config, train_teacher

    config = resolve_train_config(_overrides(args), args.config, args.out, args.resume)
    if args.dry_run:
        print(to_toml(config), end="")
        return 0
    model_dir = train_teacher(config, args.out, resume=args.resume)
    previews = [p for p in (Path(args.out) / "samples", Path(args.out) / "unet" / "samples") if p.is_dir()]
    print(f"model saved to {model_dir}" + (f"; samples in {previews[0]}" if previews else ""))
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from fewstep.config import to_toml
    from fewstep.distill import distill, resolve_distill_config

    config = resolve_distill_config(_overrides(args), args.config, args.out, args.resume)
    if args.dry_run:
        print(to_toml(config.flat()), end="")
        return 0
    for path in distill(config, args.out, resume=args.resume, force=args.force):
        print(f"student saved to {path}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from fewstep.data.visualize import save_samples
    from fewstep.models.io import load_model
    from fewstep.sample import class_labels, sample_model
    from fewstep.search.run import prompt_request

    prompts = _prompts(args)  # a bad prompt file, seed ranking or verifier for prompts fails before the model loads
    seed, golden = _seeds(args)
    indices = golden.indices(args.n) if golden else None
    request = prompt_request(args.search, prompts, args.n) if args.search and prompts is not None else None
    model = load_model(args.model, args.device)
    labels = class_labels(model, args.n, args.class_label, cycle=not args.unconditional)
    if args.search:
        result = _search(model, args, labels, prompts, request, seed, indices)
    else:
        result = sample_model(model, args.n, _plan_settings(args), seed, labels, args.batch_size, args.device,
                              prompts=prompts, negative_prompt=args.negative_prompt, indices=indices)
    images = model.decode(result.samples, args.batch_size)  # latents -> pixels; pixel models as they are
    if prompts is None:
        path = save_samples(images, args.out)
    else:
        from fewstep.data.visualize import save_prompt_grid
        path = save_prompt_grid(images, [prompts[i % len(prompts)] for i in range(args.n)], args.out)
    if args.save_tensor:
        from safetensors.torch import save_file
        decoded = {"images": images.contiguous()} if model.autoencoder is not None else {}
        save_file({"samples": result.samples.contiguous(), **decoded}, args.save_tensor)
    seeds = f"; seeds: the best of {golden.path} (seed {seed})" if golden else ""
    print(f"wrote {path} ({args.n} samples, NFE {result.nfe}; {conditioning_line(model, args, prompts)}{seeds})")
    return 0


def _seeds(args: argparse.Namespace) -> tuple[int, Any]:
    """The noise seed and the golden seeds of --seeds-from (None without it); --seed is its ranking's then."""
    from fewstep.core.errors import UserError
    from fewstep.search.seeds import read_golden_seeds

    if not args.seeds_from:
        return args.seed or 0, None
    if args.seed is not None:
        raise UserError("--seeds-from samples on the noise seed its ranking was made with; drop --seed")
    golden = read_golden_seeds(args.seeds_from)
    return golden.seed, golden


def _prompts(args: argparse.Namespace) -> list[str] | None:
    """--prompt TEXT or the lines of --prompts FILE (None when neither is given)."""
    from fewstep.core.errors import UserError
    from fewstep.data.prompts import prompt_sets, read_prompts

    if args.prompt is not None and args.prompts is not None:
        raise UserError("give --prompt TEXT or --prompts FILE, not both")
    if args.prompts and args.prompts.startswith("captions"):  # the first n captions of a test split
        return prompt_sets(args.prompts, args.n)[0].prompts
    return [args.prompt] if args.prompt is not None else read_prompts(args.prompts) if args.prompts else None


def conditioning_line(model: Any, args: argparse.Namespace, prompts: list[str] | None) -> str:
    """Which conditioning `sample` used, in words."""
    from fewstep.plan import build_plan

    num_classes = model.info.num_classes
    if prompts is not None:
        source = f"{len(prompts)} prompts from {args.prompts}" if args.prompts else f"prompt {prompts[0]!r}"
        scale = build_plan(model, _plan_settings(args)).cfg_scale
        null = f"negative prompt {args.negative_prompt!r}" if args.negative_prompt else "the empty prompt"
        what = f"text: {source}, CFG {scale:g} against {null}"
    elif not num_classes:
        what = "unconditional model"
    elif args.class_label is not None:
        what = f"every sample conditioned on class {args.class_label}"
    elif args.unconditional:
        what = "class-conditional model sampled without labels (--unconditional)"
    else:
        what = f"class labels cycling 0..{num_classes - 1} (--class-label N for one class)"
    decoded = f"; decoded by the VAE to {'x'.join(map(str, model.info.image_shape))}" if model.autoencoder else ""
    return what + decoded


def _floats(text: str | None) -> list[float] | None:
    return None if text is None else [float(v) for v in text.split(",") if v]


def _interval(text: str | None) -> tuple[float, float] | None:
    from fewstep.core.errors import UserError

    interval = _floats(text)
    if interval is not None and len(interval) != 2:
        raise UserError("--cfg-interval takes two sigmas: LO,HI")
    return tuple(interval) if interval else None


def cmd_eval(args: argparse.Namespace) -> int:
    from fewstep.bench.evaluate import EvalSettings, evaluate_model, plot_sweep, sweep, write_csv
    from fewstep.core.errors import UserError
    from fewstep.core.files import append_json_lines

    settings = EvalSettings(**vars(_plan_settings(args)), n=args.n, seed=_seeds(args)[0], batch_size=args.batch_size,
                            timing_batch=args.timing_batch, agreement=not args.no_agreement, dataset=args.dataset,
                            device=args.device, inception=args.inception, prompts=args.prompts,
                            negative_prompt=args.negative_prompt, clip=args.clip, search=args.search,
                            seeds_from=args.seeds_from)
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be at least 1, got {args.steps}")
    if args.sweep:
        nfes = [int(v) for v in _floats(args.nfe)]
        found = sweep(args.model, settings, args.samplers.split(","), nfes, args.schedules.split(","))
    else:
        found = iter([evaluate_model(args.model, settings)])
    results = Path(args.out or ".") / args.results
    rows = []
    for row in found:  # each row is appended as soon as it is measured, so a stopped sweep keeps its rows
        append_json_lines(results, [row])
        rows.append(row)
        _print_row(row, args.json)
    if args.sweep:
        stem = results.with_suffix("")
        write_csv(rows, f"{stem}-sweep.csv")
        plot_sweep(rows, f"{stem}-sweep.png")
        print(f"wrote {stem}-sweep.csv and {stem}-sweep.png")
    return 0


def _print_row(row: dict, as_json: bool) -> None:
    import json

    from fewstep.bench.evaluate import quality_key

    if as_json:
        print(json.dumps(row), flush=True)
    else:
        q = quality_key(row)
        accel = "".join(f"  {row[k]}" for k in ("cache", "guidance") if row.get(k))
        fid = f"  fid_inception {row['fid_inception']:.4g}" if "fid_inception" in row else ""
        fid += "".join(f"  {p}prompt_accuracy {row[p + 'prompt_accuracy']:.3g} "
                       f"(real {row[p + 'prompt_accuracy_floor']:.3g})"
                       for p in ("", "heldout_") if p + "prompt_accuracy" in row)
        ci = f" [{row[q + '_lo']:.3g}, {row[q + '_hi']:.3g}]" if q + "_lo" in row else ""
        print(f"{row['sampler']:>15} {row['schedule']:>9} NFE {row['nfe']:>4g}  {q} {row[q]:.4g}{ci} "
              f"(floor {row[q + '_floor']:.3g}){fid}  {row['seconds_per_sample'] * 1e3:.3g} ms/sample{accel}",
              flush=True)
        if row.get("scored_by"):
            print(f"{'':>15} prompts {row['prompt_set']}: {row['scored_by']}", flush=True)


def cmd_search_schedule(args: argparse.Namespace) -> int:
    from fewstep.accel.schedule_search import search_schedule
    from fewstep.bench.evaluate import steps_for_nfe
    from fewstep.core.schedules import write_schedule_file

    result = search_schedule(args.model, args.sampler, steps_for_nfe(args.sampler, args.nfe), args.n, args.seed,
                             args.evaluations, args.dataset, args.batch_size, args.device, args.prompts,
                             args.cfg_scale)
    write_schedule_file(result, args.out)
    print(f"wrote {args.out}: {args.sampler} NFE {result['nfe']}, {result['objective']} {result['quality']:.4g} "
          f"(karras {result['start_quality']:.4g}) on held-out seed {args.seed}; {result['evaluations']} evaluations "
          f"in {result['search_seconds']:.1f} s")
    return 0


def cmd_accelerate(args: argparse.Namespace) -> int:
    import json

    from fewstep.accelerated import save_accelerated

    info = save_accelerated(args.model, args.out, _plan_settings(args), force=args.force, dry_run=args.dry_run,
                            prompts=args.prompts)
    recorded = {"sampler": info.sampler, "acceleration": info.acceleration}
    if args.dry_run:
        print(json.dumps(recorded, indent=2))
        return 0
    print(f"wrote {args.out}: the weights of {info.extra['accelerated_from']}, recording {json.dumps(recorded)}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from fewstep.bench.report import summary_table
    from fewstep.bench.run import run_bench
    from fewstep.bench.suite import resolve_suite

    suite = resolve_suite(args.suite, args.teacher, args.students, args.n, args.device, args.prompts, args.seed)
    report = run_bench(suite, args.out)
    rows = json.loads((Path(args.out) / "results.json").read_text())
    print(f"{summary_table(rows)}\n\nreport: {report}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fewstep.demo import run_demo

    run_demo(args.out, preset=args.preset, device=args.device)
    return 0


def _add_plan_flags(parser: argparse.ArgumentParser, what: str = "sample with") -> None:
    """The sampling plan's flags (fewstep.plan.PlanSettings); unset ones take the model folder's record."""
    parser.add_argument("--sampler", help=f"sampler to {what} (default: a schedule file's, else the model's recorded "
                                          "sampler, e.g. heun or a student's own)")
    parser.add_argument("--steps", type=int, help="number of sampler steps (default: the model's recorded steps and sigmas)")
    parser.add_argument("--schedule", help="karras | karras_trailing | loglinear | uniform | PATH.json from "
                                           "search-schedule (default: the model's recorded schedule)")
    parser.add_argument("--cfg-scale", type=float,
                        help="classifier-free guidance scale; 1 = no guidance (default: the model's recorded one, "
                             "else 7.5 for a text-to-image model, else 1)")
    parser.add_argument("--cfg-interval", help="guide only for sigmas in LO,HI (default: the recorded one, else all)")
    parser.add_argument("--guidance", help="guidance accelerator on top of --cfg-scale, e.g. adaptive:threshold=0.995; "
                                           "none = no recorded guidance (default: the recorded one)")
    parser.add_argument("--cache", help="feature cache, e.g. deepcache:interval=3,branch=0 | encprop:interval=2 | "
                                        "fbcache:threshold=0.05 | errorcache:profile=P.json,budget=0.3; "
                                        "none = off (default: the recorded one)")
    for flag, key, text in SAMPLER_FLAGS:
        parser.add_argument(flag, type=float, dest=key, help=text)
    parser.add_argument("--rho", type=float, help="Karras schedule's rho (default 7; karras, karras_trailing)")
    parser.add_argument("--sigma-min", type=float, help="smallest nonzero sigma of the schedule (default: the model's; "
                                                        "karras, karras_trailing, loglinear)")
    parser.add_argument("--sigma-max", type=float, help="largest sigma of the schedule (default: the model's; karras, "
                                                        "karras_trailing, loglinear)")
    parser.add_argument("--spacing", choices=("leading", "trailing", "linspace"),
                        help="timestep spacing of schedule uniform on a discrete model, as diffusers' "
                             "timestep_spacing (default leading)")
    parser.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"),
                        help="run the denoiser under autocast in bf16 or fp16 (fp16 does nothing on CPU; default no)")


# (flag, sampler keyword, help): the options of samplers/ that a k-diffusion or diffusers user expects
SAMPLER_FLAGS = (
    ("--eta", "eta", "noise of ddim (0 = deterministic DDIM) and euler_ancestral (default: 0 for ddim, 1 for euler_ancestral)"),
    ("--s-churn", "S_churn", "edm_stochastic: how much noise to add per step (EDM's S_churn, default 40)"),
    ("--s-noise", "S_noise", "edm_stochastic: scale of the added noise (EDM's S_noise, default 1.003)"),
    ("--s-tmin", "S_tmin", "edm_stochastic: churn only at sigma >= this (EDM's S_tmin, default 0.05)"),
    ("--s-tmax", "S_tmax", "edm_stochastic: churn only at sigma <= this (EDM's S_tmax, default 50)"),
)


def _add_prompt_set_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", help="text-to-image prompt set: FILE (one prompt per line) | captions:seen | "
                                          "captions:heldout | captions (both, reported apart; the default of a "
                                          "captions model)")


def _plan_settings(args: argparse.Namespace) -> Any:
    from fewstep.core.errors import UserError
    from fewstep.plan import PlanSettings

    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be at least 1, got {args.steps}")
    sampler_options = {key: getattr(args, key) for _, key, _ in SAMPLER_FLAGS if getattr(args, key) is not None}
    schedule_options = {key: getattr(args, key) for key in ("rho", "sigma_min", "sigma_max", "spacing")
                        if getattr(args, key) is not None}
    return PlanSettings(sampler=args.sampler, steps=args.steps, schedule=args.schedule, cfg_scale=args.cfg_scale,
                        cfg_interval=_interval(args.cfg_interval), guidance=args.guidance, cache=args.cache,
                        sampler_options=sampler_options or None, schedule_options=schedule_options or None,
                        mixed_precision=args.mixed_precision)


# --- inference-time search (fewstep.search): --search on sample and eval, and `fewstep seeds` ---

def _add_search_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--search", help="search over initial noise with a verifier: best-of:n=8,verifier=classifier | "
                                         "noise-search:rounds=4,n=4,lambda=0.3,verifier=classifier | "
                                         "best-of:n=4,verifier=captions (caption prompts); ,accept=SCORE stops an "
                                         "item at its first good-enough candidate (docs/search.md)")
    parser.add_argument("--seeds-from", metavar="SEEDS.json",
                        help="golden seeds: sample i starts from the i-th best seed of this `fewstep seeds` ranking "
                             "(cycling past its bank), on the ranking's noise seed")


def _search(model: Any, args: argparse.Namespace, labels: Any, prompts: list[str] | None, request: Any, seed: int,
            indices: list[int] | None) -> Any:
    """search_sample for `fewstep sample`: on class labels, or on prompts with `request` (prompt_request's)."""
    from fewstep.plan import build_plan
    from fewstep.sample import sample_cond
    from fewstep.search import search_sample
    from fewstep.search.run import model_data

    cond = sample_cond(model, args.n, labels, prompts, args.negative_prompt)
    result = search_sample(model, build_plan(model, _plan_settings(args)), args.n, args.search, data=model_data(model),
                           seed=seed, cond=cond, request=request, batch_size=args.batch_size, device=args.device,
                           indices=indices)
    print(f"search {result.search} with {result.verifier}: {result.candidates:g} candidates per sample, "
          f"NFE {result.nfe:g} per sample over every candidate ({result.nfe_total} in all), "
          f"{result.flops_per_sample:.4g} FLOPs per sample")
    return result


def cmd_seeds(args: argparse.Namespace) -> int:
    from fewstep.search.seeds import run_seeds

    path, ranking = run_seeds(args.model, args.out, args.bank, args.verifier, _plan_settings(args), args.other,
                              args.calibration, args.heldout, args.seed, args.batch_size, args.device)
    held = ranking.heldout or {}
    other = ranking.other_model or {}
    print(f"wrote {path}: best seeds {ranking.order[:8]}; split-half {ranking.split_half}; held-out transfer "
          f"{held.get('spearman')} (floor {held.get('floor')}); other model {other.get('spearman')} "
          f"(floor {other.get('floor')})")
    return 0


def _seeds_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="run directory, fewstep model folder or diffusers folder")
    p.add_argument("--out", required=True, help="output folder (seeds.json)")
    p.add_argument("--bank", type=int, default=256, help="seeds in the bank: noise indices 0..BANK-1 of --seed")
    p.add_argument("--verifier", default="classifier", help="classifier[:seed=S] | density | module.path:function")
    p.add_argument("--other", help="another model (e.g. a student) whose ranking of the same seeds is compared")
    p.add_argument("--calibration", help="labels the ranking is fitted on, e.g. 0,1,2,3,4 (default: first half)")
    p.add_argument("--heldout", help="labels the transfer is measured on (default: the other half)")
    _add_plan_flags(p)
    p.add_argument("--seed", type=int, default=0, help="noise seed of the bank (default 0)")
    p.add_argument("--batch-size", type=int, default=256, help="samples per forward pass (default 256)")
    p.add_argument("--device", default="cpu", help="device to sample on: cpu | cuda (default cpu)")
    p.set_defaults(func=cmd_seeds)


def _train_parser(p: argparse.ArgumentParser) -> None:
    from fewstep.config import TrainConfig

    _add_run_flags(p, "run directory (config, metrics, checkpoints, samples, model)", list(fields(TrainConfig)))
    p.set_defaults(func=cmd_train)


def _distill_parser(p: argparse.ArgumentParser) -> None:
    from fewstep.config import DistillConfig
    from fewstep.distill import METHODS, option_owners

    p.description = ("Distill a teacher into a few-step student. Settings come from the preset, then --config, then "
                     "flags; progress, checkpoints and --resume work as in train. Methods: "
                     + "; ".join(f"{name}: {m.summary}" for name, m in METHODS.items()) + ".")
    shared = [f for f in fields(DistillConfig) if f.init]
    _add_run_flags(p, "run directory (config, stages' checkpoints, samples, student models)",
                   shared + [f for f, _ in option_owners().values()])
    p.add_argument("--force", action="store_true", help="distill into a non-empty --out that holds no run")
    p.set_defaults(func=cmd_distill)


def _sample_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="run directory, fewstep model folder or diffusers folder")
    p.add_argument("--out", required=True, help="the PNG file to write (a grid of images, or a 2-D scatter plot)")
    p.add_argument("--n", type=int, default=64, help="number of samples to draw (default 64)")
    _add_plan_flags(p)
    p.add_argument("--seed", type=int, help="noise seed; sample i always gets the same noise (default 0)")
    p.add_argument("--class-label", type=int, help="condition every sample on this class")
    p.add_argument("--classes", action="store_true",
                   help="cycle class labels 0..C-1 over the grid (what a class-conditional model does by default)")
    p.add_argument("--unconditional", action="store_true",
                   help="draw a class-conditional model's samples without labels (its null class)")
    p.add_argument("--prompt", help="text-to-image: condition every sample on this prompt")
    p.add_argument("--prompts", help="text-to-image: a UTF-8 file, one prompt per line (sample i gets prompt i mod k; "
                                     "the grid has one labelled row per prompt), or captions:seen | captions:heldout")
    p.add_argument("--negative-prompt", help="text-to-image: the null condition of CFG (default: the empty prompt)")
    p.add_argument("--batch-size", type=int, default=256, help="samples per forward pass (default 256)")
    p.add_argument("--device", default="cpu", help="device to sample on: cpu | cuda (default cpu)")
    p.add_argument("--save-tensor", help="also write the samples to this .safetensors file")
    _add_search_flag(p)
    p.set_defaults(func=cmd_sample)


def _eval_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="run directory, fewstep model folder or diffusers folder")
    _add_plan_flags(p, "measure")
    p.add_argument("--n", type=int, default=2000, help="number of samples to measure (default 2000)")
    p.add_argument("--seed", type=int, help="noise seed: sample i always gets the same noise (default 0)")
    p.add_argument("--batch-size", type=int, default=256, help="samples per forward pass while sampling")
    p.add_argument("--timing-batch", type=int, default=64, help="batch size of the timed runs (default 64)")
    p.add_argument("--no-agreement", action="store_true", help="skip agreement with the teacher's converged ODE")
    p.add_argument("--inception", metavar="PATH.safetensors",
                   help="also report standard FID (fid_inception) with these Inception weights (docs/metrics.md)")
    p.add_argument("--dataset", help="dataset to measure against (default: the model's)")
    _add_prompt_set_flag(p)
    p.add_argument("--negative-prompt", help="text-to-image: the null condition of CFG (default: the empty prompt)")
    p.add_argument("--clip", metavar="DIR", help="text-to-image: also report clip_score with this local CLIP folder")
    p.add_argument("--device", default="cpu", help="device to sample on: cpu | cuda (default cpu)")
    p.add_argument("--json", action="store_true", help="print each result row as one JSON object")
    p.add_argument("--out", help="folder for the results file and a sweep's CSV and plot (default: the current one)")
    p.add_argument("--results", default="results.jsonl",
                   help="results file to append to, inside --out (default results.jsonl)")
    p.add_argument("--sweep", action="store_true", help="evaluate --samplers x --schedules x --nfe; write CSV + plot")
    p.add_argument("--samplers", default="euler,heun,dpmpp_2m", help="comma-separated samplers of a sweep")
    p.add_argument("--schedules", default="karras", help="comma-separated schedules of a sweep (default karras)")
    p.add_argument("--nfe", default="4,8,16,32,64,128", help="comma-separated NFE budgets of a sweep")
    _add_search_flag(p)
    p.set_defaults(func=cmd_eval)


def _accelerate_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="run directory, fewstep model folder or diffusers folder")
    p.add_argument("--out", required=True, help="the accelerated model folder to write")
    _add_plan_flags(p, "record")
    p.add_argument("--force", action="store_true", help="replace --out if it is a model folder")
    p.add_argument("--dry-run", action="store_true", help="check the settings, print what would be recorded and exit")
    p.add_argument("--prompts", help="text-to-image: the prompt set a calibrate=true fit (teacache, MagCache) "
                                     "samples (FILE | captions:seen; default: a captions model's seen captions)")
    p.set_defaults(func=cmd_accelerate)


def _search_schedule_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="run directory, fewstep model folder or diffusers folder")
    p.add_argument("--sampler", default="dpmpp_2m", help="sampler the schedule is for (default dpmpp_2m)")
    p.add_argument("--nfe", type=int, required=True, help="NFE budget: the most steps whose NFE fits")
    p.add_argument("--out", required=True, help="the schedule file (JSON) to write, for --schedule")
    p.add_argument("--n", type=int, default=1000, help="samples per evaluated schedule (default 1000)")
    p.add_argument("--seed", type=int, default=1000, help="held-out noise seed, not the ruler's 0 (default 1000)")
    p.add_argument("--evaluations", type=int, default=80, help="most schedules to evaluate (default 80)")
    p.add_argument("--dataset", help="dataset to measure against (default: the model's)")
    _add_prompt_set_flag(p)
    p.add_argument("--cfg-scale", type=float,
                   help="text-to-image: the CFG scale to search at; 1 = no guidance (default: the model's recorded "
                        "one, else 7.5)")
    p.add_argument("--batch-size", type=int, default=1000, help="samples per forward pass (default 1000)")
    p.add_argument("--device", default="cpu", help="device to sample on: cpu | cuda (default cpu)")
    p.set_defaults(func=cmd_search_schedule)


def _bench_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", help="the teacher: run directory or model folder (default: the suite file's)")
    p.add_argument("--out", required=True, help="report folder (results.jsonl/json/csv, plots, grids/, report.html)")
    p.add_argument("--suite", help="suite TOML file (default: every sampler, cache and --students folder that fits)")
    p.add_argument("--students", help="folder searched for student models distilled from --teacher")
    p.add_argument("--n", type=int, help="samples per row (default: the suite's, 2000)")
    p.add_argument("--seed", type=int, help="noise seed of every row (default: the suite's, 0)")
    p.add_argument("--device", help="device to measure on: cpu | cuda (default: the suite's, cpu)")
    _add_prompt_set_flag(p)
    p.set_defaults(func=cmd_bench)


def _demo_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="fewstep-demo", help="folder for the teacher, the student and the report (default fewstep-demo)")
    p.add_argument("--preset", default="small", help="run length: tiny (a smoke test) | small (the real demo; default small)")
    p.add_argument("--device", default="auto", help="device to train and measure on: auto | cpu | cuda (default auto)")
    p.set_defaults(func=cmd_demo)


# name -> (one-line help, description, the function that adds the subcommand's flags)
COMMANDS: dict[str, tuple[str, str, Callable[[argparse.ArgumentParser], None]]] = {
    "train": ("train a teacher diffusion model",
              "Train a teacher with the EDM loss. Settings come from the preset, then --config, then flags.",
              _train_parser),
    "distill": ("distill a teacher into a few-step student", "", _distill_parser),
    "sample": ("sample a model into a PNG grid (images) or scatter plot (2-D)",
               "Draw seeded samples with the model's recorded sampling plan, changed by the flags.", _sample_parser),
    "eval": ("measure a model + sampler on the ruler (quality, floors, agreement, cost)",
             "Sample n items from fixed seeds and report quality against the data with its noise floor, agreement "
             "with the teacher, NFE, FLOPs, seconds and memory.", _eval_parser),
    "accelerate": ("write an accelerated model folder: same weights, recorded accelerators",
                   "Copy a model folder to --out with its fewstep.json recording a cache, guidance, CFG scale and "
                   "interval, and the sampler and schedule (a searched schedule's sigmas); sample, eval and bench on "
                   "the folder apply them unless a flag says otherwise. Every setting is checked on the model before "
                   "anything is written.", _accelerate_parser),
    "search-schedule": ("search a sigma schedule for a sampler and NFE budget",
                        "Coordinate search over log-sigma knots, from Karras's schedule, minimising the ruler's "
                        "quality (FD or sliced W2) on held-out seeds; writes the schedule as JSON for --schedule.",
                        _search_schedule_parser),
    "bench": ("measure a teacher, its samplers, accelerators and students; write report.html",
              "Evaluate every row of a suite (samplers x schedules x NFE, accelerated settings, students) on the same "
              "seeds, n and timing batch; rows already in OUT/results.jsonl are kept, so a stopped bench resumes. "
              "Writes results, Pareto plots, sample grids and a self-contained OUT/report.html.", _bench_parser),
    "seeds": ("rank a bank of seeds by a verifier (golden seeds) and measure the ranking's transfer",
              "Score every seed of a bank on calibration labels with a verifier, rank them, and report the Spearman "
              "correlation of the ranking with held-out labels and another model, beside its noise floor.",
              _seeds_parser),
    "demo": ("the main job: train a digits teacher, distill a one-step student, bench both",
             "Train the small digits teacher, distill a one-step reflow student, measure both side by side on the "
             "ruler and print where report.html is. Interrupt it any time; running it again resumes.", _demo_parser),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser; only the subcommand named in `argv` (all of them when None) gets its flags."""
    from fewstep import __version__

    parser = argparse.ArgumentParser(prog="fewstep", description="Distill, accelerate and measure diffusion models.")
    parser.add_argument("--version", action="version", version=f"fewstep {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    for name, (help_text, description, add_flags) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=description or help_text)
        if wanted is None or wanted == name:
            add_flags(p)
    return parser


# outputs each command writes: (flag, is a folder), checked before any compute
OUTPUTS = {"train": [("out", True)], "distill": [("out", True)], "bench": [("out", True)], "demo": [("out", True)],
           "accelerate": [("out", True)], "sample": [("out", False), ("save_tensor", False)],
           "eval": [("results", False)], "search-schedule": [("out", False)]}


def _check_args(args: argparse.Namespace) -> None:
    """Refuse, before any compute, counts below 1, an unknown or absent --device and outputs that cannot be written
    (config fields are checked by build_config against their bounds)."""
    from fewstep.core.device import check_device
    from fewstep.core.errors import UserError
    from fewstep.core.files import check_writable

    config_fields = set(getattr(args, "config_fields", ()))
    for name, value in vars(args).items():
        if name not in config_fields and isinstance(value, int) and not isinstance(value, bool) and value < 1 \
                and name not in ("seed", "class_label"):
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    check_device(getattr(args, "device", None))
    for name, folder in OUTPUTS.get(args.command, []):
        if getattr(args, name, None) is not None:
            check_writable(getattr(args, name), folder, "--" + name.replace("_", "-"))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `fewstep` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    from fewstep.core.errors import UserError

    try:
        _check_args(args)
        return args.func(args)
    except UserError as e:
        print(f"fewstep: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, an unreadable file: one line, not a traceback
        from fewstep.core.files import first_line

        print(f"fewstep: I/O error: {first_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fewstep: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a stopped training run: say where its checkpoint is
        from fewstep.train.loop import Diverged, TrainingInterrupted

        if isinstance(e, (TrainingInterrupted, Diverged)):
            print(f"fewstep: {e}", file=sys.stderr)
            return 130 if isinstance(e, TrainingInterrupted) else 1
        raise


if __name__ == "__main__":
    sys.exit(main())
