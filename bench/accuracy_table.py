"""Accuracy retained per pruning method at about 50%, 25% and 11% of the visual tokens.

For each target share s of the image's visual tokens, one recipe per method:
- FitPrune (calibrated on --calib-data), PyramidDrop and FastV (solved analytically): the FLOPs
  budget is what keeping s of the visual tokens in every LLM layer would cost (paper convention),
  so the schedules spend about the compute of s of the tokens; the tokens they really attend per
  layer are measured and printed beside the accuracy. FastV prunes after layer K = 2 of 32 in
  its paper; here K scales with depth (L / 16, at least 1) as PyramidDrop's stages do.
  PyramidDrop's paper stages (L/4, L/2, 3L/4) see every token in the first quarter of the layers,
  so they cannot spend less than about 25%; below that its three stages start at FastV's K and
  split the remaining layers evenly (a note under the table says where);
- FoPru-rank: the selector keeps floor(N * s) tokens;
- PruMerge (fixed-budget form): keeps round(N * s) - 1 tokens plus its one merged token;
- DivPrune, CDPruner (which reads the question through CLIP's text tower) and DART's pre-LLM
  variant: keep round(N * s) tokens;
- the baselines: random keeps round(N * s) patches of one seeded draw; pool averages the patch
  grid into the most m x m cells (m dividing the grid side) that fit in N * s.
All recipes are evaluated in one `vtpexport eval` run against the unpruned model; a cell reads
"accuracy retained (visual tokens attended per layer, share of the image's)". Without labels
in --data, agreement with the unpruned model replaces accuracy. A recipe that cannot be made
(a budget out of the method's reach, a method the family does not support) is printed as
"not run", with the reason.

Usage: python bench/accuracy_table.py --data HELD_OUT.jsonl [--model toy] [--calib-data PATH]
       [--calib-samples 64] [--limit N] [--max-new-tokens 4] [--workdir DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

from vtpexport.calibrate import CalibrationRequest, calibrate, reference_image
from vtpexport.errors import UserError
from vtpexport.eval import evaluate
from vtpexport.flops import paper_layer_macs
from vtpexport.models.loader import architecture, resolve_model
from vtpexport.models.text_encoder import resolve_text_encoder
from vtpexport.pruning.registry import methods
from vtpexport.recipe import ModelRef, Recipe, SelectorSpec

SHARES = (0.5, 0.25, 0.11)
METHODS = (
    "fitprune", "pyramiddrop", "fastv", "fopru-rank", "prumerge", "divprune", "cdpruner", "dart", "random", "pool"
)  # fmt: skip


def budget_for_share(args, n_image: int, share: float) -> Fraction:
    """The paper-convention FLOPs of keeping `share` of the visual tokens in every layer, as a
    fraction of the unpruned (a number calibrate accepts: at most 6 decimals, rounded down)."""
    kept = round(n_image * share)
    fraction = Fraction(paper_layer_macs(args.text, kept, kept), paper_layer_macs(args.text, n_image, n_image))
    return Fraction(int(fraction * 10**6), 10**6)


def early_stage_layers(num_layers: int, first: int) -> tuple[int, ...]:
    """PyramidDrop's three stage boundaries, the first at `first`, the others splitting the rest evenly."""
    return tuple(sorted({first + (num_layers - first) * k // 3 for k in range(3)} & set(range(1, num_layers))))


def make_recipe(
    method: str, share: float, model: str, calib_data: str | None, samples: int
) -> tuple[Recipe, str | None]:
    """The recipe for one cell, and a note when it departs from the method's defaults."""
    args = architecture(model)
    _, n_image, _ = reference_image(args)
    name = f"{method}-s{round(100 * share):02d}"
    ref = ModelRef(args.family, model, args.config_hash())
    selector = methods("selector").get(method)
    if selector is not None and args.layout.tiled and selector.tiles_refusal is not None:
        raise UserError(f"{method} does not run per tile on {args.layout.rule} images: it {selector.tiles_refusal}")
    if method == "fopru-rank":
        return Recipe(name, ref, selector=SelectorSpec("fopru-rank", ratio=share)), None
    if method == "prumerge":
        return Recipe(name, ref, selector=SelectorSpec("prumerge", tokens=max(round(n_image * share) - 1, 0))), None
    if method in ("divprune", "cdpruner", "dart", "random"):
        return Recipe(name, ref, selector=SelectorSpec(method, tokens=max(round(n_image * share), 1))), None
    if method == "pool":  # the most m x m cells (m dividing the grid side) within the share
        grid = args.vision.grid_size
        cells = max(m * m for m in range(1, grid + 1) if grid % m == 0 and m * m <= max(n_image * share, 1))
        return Recipe(name, ref, selector=SelectorSpec("pool", tokens=cells)), None
    budget = budget_for_share(args, n_image, share)
    fastv_layer = max(1, args.text.num_layers // 16)
    request = CalibrationRequest(
        model=model,
        flops_budget=str(float(budget)),
        method=method,
        data=calib_data,
        samples=samples,
        fastv_layer=fastv_layer,
        name=name,
    )
    try:
        return calibrate(request, progress=True).recipe, None
    except UserError:
        if method != "pyramiddrop":
            raise
    layers = early_stage_layers(args.text.num_layers, fastv_layer)
    recipe = calibrate(replace(request, stage_layers=layers), progress=True).recipe
    return recipe, f"stages at layers {list(layers)}: the paper's L/4, L/2, 3L/4 cannot reach this budget"


def markdown_table(report, cells: dict[tuple[str, float], str | dict]) -> str:
    """Rows: methods; columns: target shares; cells: retained metric and the measured token share."""
    metric = report.metric
    reference = getattr(report.entries[0].overall, metric)
    lines = [
        f"Unpruned {metric}: {100 * reference:.1f}% on {report.samples} samples of {report.data} ({report.model}).",
        "",
        "| method | " + " | ".join(f"~{round(100 * share)}% of tokens" for share in SHARES) + " |",
        "|---|" + "---:|" * len(SHARES),
    ]
    notes = []
    for method in METHODS:
        row = []
        for share in SHARES:
            cell = cells[method, share]
            if isinstance(cell, dict) and cell["note"]:
                notes.append(f"{len(notes) + 1}. {method} at ~{round(100 * share)}%: {cell['note']}")
            if isinstance(cell, str):
                notes.append(f"{len(notes) + 1}. {method} at ~{round(100 * share)}%: {cell}")
                row.append(f"not run ({len(notes)})")
                continue
            value = getattr(cell["entry"].overall, metric)
            retained = "n/a" if not reference else f"{100 * value / reference:.1f}%"
            tokens = cell["entry"].compute.to_dict()["visual_token_share"]
            marker = f" ({len(notes)})" if cell["note"] else ""
            row.append(f"{retained} ({100 * tokens:.0f}%){marker}")
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    lines += [
        "",
        f"Cells: {metric} retained (pruned / unpruned) and, in brackets, the visual tokens attended per LLM "
        "layer as a share of the image's, measured.",
        *notes,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy")
    parser.add_argument("--data", required=True, help="Held-out JSONL with answers (and types).")
    parser.add_argument("--calib-data", default=None, help="FitPrune calibration data (default: --data).")
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--limit", type=int, default=None, help="Evaluate the first N rows of --data.")
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "vtpexport-accuracy")
    parser.add_argument("--json", type=Path, default=None, help="Also write eval's full results here.")
    options = parser.parse_args(argv)
    calib_data = options.calib_data or options.data
    options.workdir.mkdir(parents=True, exist_ok=True)
    cells: dict[tuple[str, float], str | dict] = {}
    paths = []
    for method in METHODS:
        for share in SHARES:
            try:
                recipe, note = make_recipe(method, share, options.model, calib_data, options.calib_samples)
                if recipe.selector is not None and recipe.selector.text_guided:  # refused now, not mid-eval
                    resolve_text_encoder(resolve_model(options.model), None)
            except UserError as error:
                cells[method, share] = str(error).replace("|", "/")
                continue
            path = options.workdir / f"{recipe.name}.yaml"
            recipe.save(path)
            cells[method, share] = {"path": str(path), "note": note}
            paths.append(str(path))
    report = evaluate(
        paths, options.data, options.model, limit=options.limit, max_new_tokens=options.max_new_tokens, progress=True
    )
    by_source = {entry.source: entry for entry in report.entries}
    for cell in cells.values():
        if isinstance(cell, dict):
            cell["entry"] = by_source[cell["path"]]
    if options.json:
        report.write_json(options.json)
    table = markdown_table(report, cells)
    print(f"FitPrune calibrated on {calib_data} ({options.calib_samples} samples at most)\n")
    print(table)
    return table


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
