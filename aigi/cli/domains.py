"""`aigi domains`: assign semantic domains to cached images (CLIP zero-shot prompts, else k-means clusters)."""

from __future__ import annotations

import argparse
from pathlib import Path

from aigi.cli._options import add_out_argument, cache_inputs
from aigi.common.outputs import Input, check_output, committed
from aigi.pipeline.domains import DomainsOptions, DomainsResult, write_domains

DOMAINS_HELP = """\
Assigns a semantic domain to every image of a cache (one value per image_id, from its `orig` view):
  zero-shot  when --text-weights is given and the cache holds CLIP's projected embedding (--feature, default
             proj): cosine similarity to CLIP text embeddings of prompt ensembles for human, animal, object,
             scene, anime (OpenAI's prompt-ensembling recipe); the text tower is read from a local OpenAI /
             open_clip CLIP checkpoint (e.g. ViT-L/14 or ViT-L/14-336: the text towers are the same)
  k-means    otherwise: sklearn KMeans (k = --k) on the L2-normalised feature (--feature, default: the cache's
             first), domains named cluster0 .. cluster{k-1}
The output says which method was used (column `method`, and the printed summary).

Outputs: -o DOMAINS.parquet (image_id, domain, score, method); with --manifest M, -o is instead a copy of M whose
empty `domain` cells are filled (all cells with --overwrite), so `aigi extract` carries the domains into new
caches. For an existing cache, point a run config at the table: data.domains: DOMAINS.parquet (joined by
image_id when rows are loaded; `router` heads read the `domain` column).
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `aigi domains --cache C [--k N] [--text-weights W --feature proj] [--manifest M] -o OUT`."""
    p = subparsers.add_parser(
        "domains",
        help="assign semantic domains to cached images (CLIP zero-shot prompts, else k-means clusters)",
        description=DOMAINS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    default = DomainsOptions()
    p.add_argument("--cache", type=Path, required=True, help="the feature cache")
    p.add_argument(
        "--k", type=int, default=default.k, help="k-means clusters when zero-shot is not possible (default 5)"
    )
    p.add_argument(
        "--text-weights",
        help="CLIP checkpoint holding the text tower (zero-shot): a local file, hf-hub:ORG/REPO[:FILE][@REV], or "
        "the cache backbone's alias (openai for clip-l14 / clip-l14-336)",
    )
    p.add_argument("--feature", help="feature to use (zero-shot default: proj; k-means default: the first)")
    p.add_argument("--view", default=default.view, help="view representing each image (default orig)")
    p.add_argument("--seed", type=int, default=default.seed, help="k-means seed (default 0)")
    p.add_argument("--manifest", type=Path, help="write the domains into a copy of this manifest (to -o)")
    add_out_argument(p, metavar="FILE", text="domains table (.parquet), or the new manifest", overwrite=False)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing -o file; with --manifest also replace non-empty domains",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Entry point of `aigi domains`."""
    options = DomainsOptions(
        k=args.k,
        text_weights=args.text_weights,
        feature=args.feature,
        view=args.view,
        seed=args.seed,
        manifest=args.manifest,
        overwrite=args.overwrite,
    )
    inputs = cache_inputs([args.cache]) + [Input(f, "the file") for f in (args.manifest, args.text_weights) if f]
    out = check_output(args.out, kind="file", inputs=inputs, overwrite=args.overwrite)
    with committed(out):
        print(summary(write_domains(args.cache, args.out, options)))
    return 0


def summary(result: DomainsResult) -> str:
    """The one line `aigi domains` prints: the method, the count per domain and what was written."""
    counts = ", ".join(f"{d}: {n}" for d, n in result.table["domain"].value_counts().sort_index().items())
    if result.manifest_rows is None:
        where = f"{len(result.table)} images"
    else:
        matched = f"{result.matched} of {result.manifest_rows} matched a cached image"
        where = f"{result.changed} manifest rows changed ({matched})"
    return f"domains by {result.how}: {counts}; {where} -> {result.out}"
