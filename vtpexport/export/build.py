"""`vtpexport build --engine onnx`: model + recipe -> a self-contained, verified-to-lint export folder.

The folder is assembled under a hidden temporary name beside the destination and renamed
into place only when complete, so a failed or interrupted build never looks finished.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import __version__
from ..errors import UserError
from ..files import folder_atomically
from ..flops import exact_prefill_macs, paper_flops
from ..models.loader import load_model
from ..models.question_templates import TEMPLATES_FILE
from ..models.text_encoder import TEXT_TOKENIZER, attach_text_encoder, check_recipe_applies
from ..progress import step_log
from ..recipe import Recipe
from ..safety import inside
from ..schema import slugify
from .attention import attention_target
from .lint import SUPPORTED_OPSETS, format_issues, lint_graphs
from .manifest import is_export, write_manifest
from .onnx_export import IR_VERSION, export_all
from .precision import precision as find_precision
from .spec import ExportLimits, dim_ranges, graph_specs, image_token_range, phase_ranges, stage_of_layer
from .tensorrt import PROFILES, build_engines, engine_profiles, profiles_json

# Files a model folder carries besides weights that the runtime needs.
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
    "processor_config.json",
    "preprocessor_config.json",
    TEMPLATES_FILE,
)


def default_output(recipe: Recipe | None, model_spec: str) -> Path:
    """exported/<recipe name>: the name is a validated slug, and may not lead out through a link."""
    name = export_name(recipe, model_spec)
    inside("exported", name, "the recipe's name")
    return Path("exported") / name


def export_name(recipe: Recipe | None, model_spec: str) -> str:
    """The recipe's name, or <model>-unpruned: a slug either way (it names folders and Triton models)."""
    return recipe.name if recipe else slugify(f"{Path(model_spec).name}-unpruned")


@dataclass(frozen=True)
class BuildSettings:
    """How `vtpexport build` exports and builds, beside what it exports (model and recipe)."""

    precision: str = "fp32"
    trt_target: str = "10"
    opset: int | None = None
    max_batch: int = 4
    max_prompt_len: int = 256
    max_new_tokens: int = 128
    force: bool = False
    text_encoder: str | None = None
    workspace: float | None = None  # GiB, TensorRT's default 4 when None
    timing_cache: str | None = None


def build_export(
    settings: BuildSettings,
    recipe_path: str | None,
    model_spec: str | None = None,
    weights: str | None = None,
    no_prune: bool = False,
    from_dir: str | None = None,
    engine: str = "onnx",
    out: str | None = None,
    triton_repo: str | None = None,
) -> Iterator[str]:
    """`vtpexport build`: the ONNX export (unless `from_dir` names an existing one), then
    TensorRT engines and a Triton repository if asked; yields what to print as each is written,
    and reports steps on stderr."""
    report = step_log()
    if from_dir is not None:
        if recipe_path or model_spec or weights or no_prune:
            raise UserError("--from builds on an existing export; --recipe, --model and --no-prune do not apply")
        if engine != "trt" and not triton_repo:
            raise UserError("--from needs --engine trt or --triton-repo (the ONNX graphs are already in the folder)")
        folder = Path(from_dir)
    else:
        if no_prune:
            if recipe_path and model_spec is None:
                model_spec = Recipe.load(recipe_path).model.name
            recipe_path = None
        limits = ExportLimits(settings.max_batch, settings.max_prompt_len, settings.max_new_tokens)
        folder = build_onnx(
            model_spec,
            recipe_path,
            out,
            weights,
            limits,
            settings.opset,
            settings.force,
            report,
            settings.precision,
            settings.text_encoder,
            int(settings.trt_target),
        )
        if engine == "trt":  # the ONNX is progress here, so a refusal prints its one error line and nothing else
            report(f"wrote {folder}")
        else:
            yield f"wrote {folder}"
    if engine == "trt":
        build_engines(folder, settings.workspace, settings.timing_cache, report)
        yield f"wrote TensorRT engines to {folder}"
    if triton_repo:
        from .triton import write_triton_repo

        yield f"wrote Triton model repository {write_triton_repo(folder, triton_repo, settings.force)}"


def build_onnx(
    model_spec: str | None,
    recipe_path: str | None,
    out: str | None = None,
    weights: str | None = None,
    limits: ExportLimits | None = None,
    opset: int | None = None,
    force: bool = False,
    report: Callable[[str], None] = lambda message: None,
    precision: str = "fp32",
    text_encoder: str | None = None,
    trt_target: int = 10,
) -> Path:
    """Export vision, prefill and decode graphs with the recipe baked in (and CLIP's text tower
    for a text-guided selector, from `text_encoder` or the model's default); returns the folder.

    precision: fp32, fp16 or bf16 weights and activations (norms and pruning scores stay fp32).
    trt_target: the TensorRT generation whose fused-attention form the graphs use (10 or 11);
    opset: the ONNX opset (default: the target's).
    """
    chosen = find_precision(precision)
    target, opset = attention_target(trt_target, opset)
    if not SUPPORTED_OPSETS[0] <= opset <= SUPPORTED_OPSETS[1]:
        raise UserError(f"--opset {opset} is outside {SUPPORTED_OPSETS[0]}..{SUPPORTED_OPSETS[1]}")
    recipe = Recipe.load(recipe_path) if recipe_path else None
    model_spec = model_spec or (recipe.model.name if recipe else None)
    if model_spec is None:
        raise UserError("pass --model (or a --recipe, whose model is used)")
    model = load_model(model_spec, weights, chosen.torch_dtype)
    if text_encoder is not None:
        attach_text_encoder(model, text_encoder)
    check_recipe_applies(model, recipe)
    text = model.text_encoder.module if model.text_encoder else None
    args = model.args
    if args.text.sliding_window is not None:
        raise UserError("sliding-window attention is not supported by the exporter yet (config sliding_window)")
    destination = Path(out) if out else default_output(recipe, model_spec)
    with folder_atomically(destination, force, "the export", is_export) as staging:
        specs = graph_specs(args, recipe, chosen.dtype_name, text.args if text else None)
        expressions = export_all(
            model.graph, recipe, specs, staging, opset, lambda g: report(f"exporting {g}.onnx"), text, target
        )
        for name in MODEL_FILES:
            if (model.source.folder / name).is_file():
                shutil.copy2(model.source.folder / name, staging / name)
        if recipe:
            recipe.save(staging / "recipe.yaml")
        if "text_encoder" in specs:
            model.text_encoder.tokenizer.save_pretrained(staging / TEXT_TOKENIZER)
        limits = limits or ExportLimits()
        ranges = dim_ranges(args, recipe, limits, text.args if text else None)
        onnx_runtime_only = _onnx_runtime_only(recipe)
        if onnx_runtime_only:
            report(f"note: {onnx_runtime_only}")
        report("linting graphs for TensorRT")
        paths = {name: staging / f"{name}.onnx" for name in specs}
        issues = lint_graphs(paths, ranges, ["vision"] if onnx_runtime_only else []).issues
        if issues:
            raise UserError(f"lint failed ({len(issues)} issue(s)): {format_issues(issues[:1]).strip()}")
        content = _manifest(model, model_spec, recipe, specs, expressions, ranges, limits, opset, chosen.name, target)
        (staging / PROFILES).write_text(profiles_json(engine_profiles(content)))
        write_manifest(staging, content)
    return destination


def _onnx_runtime_only(recipe: Recipe | None) -> str | None:
    """Why the export cannot become TensorRT engines, or None when it can."""
    if recipe is None or recipe.selector is None or not recipe.selector.adaptive:
        return None
    counts = "tokens, text_tokens and merge_tokens" if recipe.selector.text_guided else "tokens: K"
    return (
        f"adaptive {recipe.selector.method} keeps a data-dependent number of tokens: vision.onnx runs on "
        f"ONNX Runtime (one image per call), not TensorRT; set {counts} in the recipe for TensorRT"
    )


def _ranges(ranges: dict[str, tuple[int, int, int]]) -> dict[str, dict[str, int]]:
    return {name: dict(zip(("min", "opt", "max"), r, strict=True)) for name, r in ranges.items()}


def _manifest(model, model_spec, recipe, specs, expressions, ranges, limits, opset, precision, target) -> dict:
    args = model.args
    schedule = recipe.schedule if recipe else None
    n_min, n_opt, n_max = image_token_range(args, None)
    size = args.layout.typical_size()  # the image size of n_opt
    if _onnx_runtime_only(recipe):
        flops = {"image_tokens": n_opt, "data_dependent": "the adaptive selector's token count varies per image"}
    else:
        paper = paper_flops(args, recipe, n_opt, size)
        exact = exact_prefill_macs(args, recipe, n_opt, 32, 32, args.layout.num_tiles(size), size)
        flops = {
            "image_tokens": n_opt,
            "paper_convention_macs": paper.total,
            "paper_convention_unpruned_macs": paper.unpruned,
            "exact_prefill_macs": asdict(exact) | {"total": exact.total, "prefix_len": 32, "suffix_len": 32},
        }
    return {
        "name": export_name(recipe, model_spec),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "tool": f"vtpexport {__version__}",
        "engine": "onnx",
        "precision": precision,
        "opset": opset,
        "trt_target": {"major": target.trt_major, "attention": target.form},
        "ir_version": IR_VERSION,
        "model": {
            "name": model_spec,
            "family": args.family,
            "config_hash": args.config_hash(),
            "source": str(model.source.folder.resolve()),
        },
        "recipe": recipe.to_dict() if recipe else None,
        "onnx_runtime_only": _onnx_runtime_only(recipe),  # why TensorRT cannot take it, or null
        "text_encoder": (
            {"source": str(model.text_encoder.folder.resolve()), "tokenizer": TEXT_TOKENIZER}
            if "text_encoder" in specs
            else None
        ),
        "position_policy": recipe.position_policy if recipe else "original",
        "layer_stage": stage_of_layer(schedule, args.text.num_layers),
        "graphs": {
            name: {**spec.to_dict(), "file": f"{name}.onnx", "output_dim_expressions": expressions[name]}
            for name, spec in specs.items()
        },
        "dims": _ranges(ranges),  # over every phase: what the lint bounds and the runtime checks
        # The LLM graph's optimization profiles (its `profiles` list names them), one per phase.
        "profiles": {phase: _ranges(r) for phase, r in phase_ranges(model.args, recipe, limits).items()},
        "image_tokens": {
            "image_token_id": args.image_token_id,
            "rule": args.layout.rule,
            "placeholders_per_image": [n_min, n_max],
            "tokens_per_tile": args.tokens_per_tile,
            "prompt": "the prompt's <image> marks where image_embeds go: prefix_ids before, suffix_ids after; "
            "no placeholder tokens are fed to the graphs",
        },
        "flops": flops,
    }
