"""emi.diff's plan, checked before any weights load (the layer against the config, the text, the
persona direction's width, the store's models), and the dispatch to each method."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emi.core.errors import ConfigError
from emi.diffing import corpus, report
from emi.diffing.loop import Found, cosine_table
from emi.diffing.records import CosineRow
from emi.directions.direction import Direction

__all__ = ["METHODS", "Found", "layer", "methods", "persona", "print_cosines", "run_method", "store", "texts"]


def layer(spec: Any, requested: str | None, trust_remote_code: bool = False) -> tuple[int, int]:
    """(the layer read, the model's depth) from the base's config alone."""
    from emi.models import layers as L
    from emi.models.loading import text_config

    cfg = text_config(spec.base, trust_remote_code)[0]
    depth = getattr(cfg, "num_hidden_layers", None) if cfg is not None else None
    if not isinstance(depth, int):
        if requested is None:
            raise ConfigError("the base's config does not say how many layers it has; pass --layer L")
        return int(requested), -1
    if requested is None:
        return depth // 2, depth
    got = L.resolve_layers(requested, depth)
    if len(got) != 1:
        raise ConfigError(f"--layer takes one layer, not {requested!r}")
    return got[0], depth


def texts(args: argparse.Namespace, kit: Any) -> list[str]:
    if args.text and args.dataset:
        raise ConfigError("give --text FILE or --dataset ID, not both")
    if args.text:
        return corpus.read_text_file(args.text)
    if args.dataset:
        return corpus.load_dataset_texts(args.dataset, args.dataset_split, args.text_column, args.n_texts)
    return corpus.default_texts(kit)


def persona(spec: Any, path: str | None, trust_remote_code: bool = False) -> Direction | None:
    from emi.core.errors import ModelLoadError
    from emi.models.loading import text_config

    where = path or spec.kit.direction
    if not where:
        print("emi: note: this pair ships no persona direction; pass --persona FILE (python -m emi.extract) to "
              "compare with it", file=sys.stderr)
        return None
    d = Direction.load(where)
    try:
        cfg = text_config(spec.base, trust_remote_code)[0]
    except ModelLoadError:
        return d  # loading the pair says what is wrong with it
    if cfg is not None and isinstance(getattr(cfg, "hidden_size", None), int):
        d.check_fits(cfg.hidden_size, getattr(cfg, "num_hidden_layers", None), f"pair {spec.name!r}")
    return d


METHODS = ("adl", "kl", "crosscoder")


def methods(text: str) -> list[str]:
    """--method: one of adl, kl, crosscoder, or several comma-separated (run in that order, one table)."""
    got = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in got if m not in METHODS]
    if bad or not got or len(set(got)) != len(got):
        raise argparse.ArgumentTypeError(f"--method takes {', '.join(METHODS)} or several of them comma-separated, "
                                         f"each once, not {text!r}")
    return got


def store(args: argparse.Namespace, spec: Any) -> Any:
    from emi.diffing.crosscoder import check_store

    return check_store(args.store, spec, args.layer) if args.store else None


def run_method(args: argparse.Namespace, pair: Any, lay: int, txt: Sequence[str], pers: Direction | None,
               questions: Sequence[Any], cfg: Any, judge: Any, benign: Sequence[Any], st: Any, out: Path,
               engine: Any = None, method: str | None = None) -> list[Found]:
    """The directions ``method`` (default ``args.method``, one name) finds."""
    from emi.diffing import adl, pipeline

    method = method or (args.method if isinstance(args.method, str) else args.method[0])
    ids = corpus.tokenize(txt, pair.tokenizer, args.max_tokens, args.n_texts)
    if method == "adl":
        import dataclasses

        search = None
        if args.search_steps:
            from emi.diffing.steering import SearchConfig

            search = SearchConfig(args.coherence_threshold, args.max_strength, args.search_steps)
        scfg = dataclasses.replace(cfg, n=args.search_n)
        acfg = adl.AdlConfig(lay, args.positions, args.max_tokens, args.diff_batch_size)
        found, rows, _ = pipeline.run_adl(pair, ids, acfg, out, pers, search, questions, scfg, judge, engine=engine)
        report.print_adl(rows)
        return _keep(found, args.table)
    if method == "kl":
        from emi.diffing import kl

        return kl.run_kl(pair, questions, list(benign)[: args.n_texts], ids, lay, pers, out, args.top,
                         args.diff_batch_size)
    from emi.diffing import crosscoder

    return crosscoder.run_crosscoder(args, pair, lay, ids, st, out)


def _keep(found: list[Found], table: str | None) -> list[Found]:
    if not table:
        return found
    want = {f"adl d{x.strip()}" for x in table.split(",") if x.strip()}
    return [f for f in found if f.name in want]


def print_cosines(found: Sequence[Found], out: Path, lay: int) -> None:
    named = [(f.name, f.direction.at(lay, unit=False)) for f in found if lay in f.direction.layers]
    md = out / "directions" / f"model-diff-L{lay}.safetensors"
    if md.is_file():
        named.append(("model-diff (corpus)", Direction.load(md).at(lay, unit=False)))
    if len(named) > 1:
        table = cosine_table(named)
        CosineRow.write(out, table)
        report.print_cosines(table)
