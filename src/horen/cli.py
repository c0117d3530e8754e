"""``horen``: a thin command-line shell over the library.

Subcommands: ``edit``, ``generate``, ``edits list|remove``, ``serve``, ``demo``,
``calibrate``, and ``bench`` / ``report`` (mounted from :mod:`horen.bench` and :mod:`horen.report`).
An edit set lives in a directory (``--edits DIR``, default ``horen-edits``); it remembers its
method, its settings and the model it belongs to, so later commands need only the directory.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

DEFAULT_EDITS = "horen-edits"


def _set_threads(n: int | None) -> None:
    import torch

    if n:
        torch.set_num_threads(n)


def open_editor(args):
    """The model and the edit set at ``args.edits`` (:func:`horen.open_edit_set`)."""
    from .editors.base import parse_settings
    from .editset import open_edit_set

    return open_edit_set(args.edits, model=args.model, method=args.method,
                         settings=parse_settings(getattr(args, "set", None)),
                         device=args.device, dtype=args.dtype)


def cmd_edit(args) -> int:
    from .data import load_dataset

    editor = open_editor(args)
    if args.from_file:
        records = load_dataset(args.from_file, skip_bad=args.skip_bad).records
    else:
        if not (args.prompt and args.target):
            raise SystemExit("horen edit needs --prompt and --target (or --from FILE)")
        from .data.record import EditRecord

        records = [EditRecord(prompt=args.prompt, target=args.target, subject=args.subject)]
    import warnings

    from .editors import NotConvergedWarning

    for record in records:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotConvergedWarning)  # said on the line below
            eid = editor.apply(record)
        e = editor.edits[-1]
        print(f"edit {eid}: {record.prompt!r} -> {record.target!r} "
              f"({e.get('case', '')}, {e['seconds']:.2f} s{_training(e)})")
    editor.save(args.edits)
    print(f"saved {len(editor.edits)} edits to {args.edits}")
    return 0


def _training(edit: dict) -> str:
    """``, loss 0.02`` or ``, NOT CONVERGED (loss 1.8 after 200 steps)`` for a trained edit."""
    if "converged" not in edit:
        return ""
    if edit["converged"]:
        return f", loss {edit['loss']:.3g}"
    return f", NOT CONVERGED (loss {edit['loss']:.3g} after {edit['steps']} steps)"


def cmd_generate(args) -> int:
    editor = open_editor(args)
    answers = editor.generate(args.prompt, max_new_tokens=args.max_new_tokens)
    for prompt, answer in zip(args.prompt, answers):
        print(f"{prompt}\n  -> {answer}")
    return 0


def cmd_edits(args) -> int:
    from .editors.base import read_meta

    path = Path(args.edits)
    meta = read_meta(path)
    if meta is None:
        raise SystemExit(f"no saved edits at {path}")
    if args.action == "list":
        print(f"{len(meta['edits'])} {meta['method']} edits on {meta['model']['name']}")
        for e in meta["edits"]:
            folded = "  (folded: no rollback)" if e.get("folded") else ""
            folded += "  (NOT converged)" if e.get("converged") is False else ""
            print(f"{e['id']:>6}  {e['time']}  entry {e.get('entry', '-'):>5}  "
                  f"{e['prompt']!r} -> {e['target']!r}{folded}")
        return 0
    if args.id is None:
        raise SystemExit("horen edits remove needs an edit id")
    editor = open_editor(args)
    removed = editor.remove(args.id, cascade=args.cascade)
    editor.save(path)
    print(f"removed edits {removed}; {len(editor.edits)} left")
    return 0


def cmd_calibrate(args) -> int:
    import horen

    if args.method == "horen-entity":
        return _calibrate_entity(args)

    from .calibrate import DEFAULT_TAUS, format_table, sweep
    from .data import load_dataset

    model, tok = horen.load_model(args.model, device=args.device, dtype=args.dtype)
    editor = horen.HoReN(model, tok, chat=args.chat)
    records = load_dataset(args.dataset, n=args.n, data_root=args.data_root).records
    taus = args.taus or DEFAULT_TAUS
    rows, best = sweep(editor, records, taus=taus, pool_ratios=args.pool_ratios or (None,))
    print(format_table(rows, best))
    print(f"\nchosen: tau={best.tau} pool_ratio={best.pool_ratio} "
          f"(routing rel {best.rel:.3f} gen {best.gen:.3f} loc {best.loc:.3f}, {len(records)} "
          f"{args.dataset} records)")
    editor.close()
    _start_edit_set(args, model, tok, "horen", tau=best.tau, pool_ratio=best.pool_ratio,
                    chat=args.chat)
    return 0


def _start_edit_set(args, model, tok, method: str, **settings) -> None:
    """With ``--edits DIR``: a new, empty edit set there holding the chosen settings, so that
    ``horen edit / serve --edits DIR`` use them; otherwise say how to pass them."""
    import horen

    if not args.edits:
        flags = " ".join(f"--set {k}={v}" for k, v in settings.items() if v is not None)
        print(f"use them: horen edit --method {method} {flags} ... (or calibrate with --edits DIR)")
        return
    editor = horen.get_method(method)(model, tok, **settings)
    editor.save(args.edits)
    editor.close()
    print(f"saved an empty {method} edit set with these settings to {args.edits}")


def _tau_or_off(text: str) -> float | None:
    return None if text == "off" else float(text)


def _calibrate_entity(args) -> int:
    import horen

    from .calibrate import DEFAULT_ANCHOR_TAUS, format_entity_table, sweep_entity
    from .data import load_dataset

    model, tok = horen.load_model(args.model, device=args.device, dtype=args.dtype)
    records = load_dataset(args.dataset, n=args.offset + args.n, data_root=args.data_root).records
    records = records[args.offset :]
    cls = horen.get_method("horen-entity")

    background = {}
    if args.background_tokens is not None:
        background["background_tokens"] = args.background_tokens

    def editor_for(layer):
        return cls(model, tok, chat=args.chat, anchor_layer=layer, anchor_tokens=args.anchor_tokens,
                   question_tau=None, **background)

    layers = args.anchor_layers
    if not layers:
        probe = editor_for(None)  # the method's default anchor layer for this model
        layers = [probe.anchor_layer]
        probe.close()
    rows, best = sweep_entity(editor_for, records, layers, args.taus or (0.5, 0.6, 0.7, 0.775),
                              args.anchor_taus or DEFAULT_ANCHOR_TAUS,
                              args.question_taus or [None, cls.config_class().question_tau])
    print(format_entity_table(rows, best))
    print(f"\nchosen: anchor_layer={best.anchor_layer} tau={best.tau} anchor_tau={best.anchor_tau} "
          f"question_tau={best.question_tau} anchor_tokens={args.anchor_tokens} "
          f"background_tokens={background.get('background_tokens', 'default')} "
          f"(routing rel {best.rel:.3f} gen {best.gen:.3f} loc {best.loc:.3f} same {best.same:.3f}, "
          f"{len(records)} "
          f"{args.dataset} records from {args.offset})")
    _start_edit_set(args, model, tok, "horen-entity", chat=args.chat, tau=best.tau,
                    anchor_layer=best.anchor_layer, anchor_tau=best.anchor_tau,
                    question_tau=best.question_tau, anchor_tokens=args.anchor_tokens, **background)
    return 0


def cmd_serve(args) -> int:
    import logging
    import os

    import uvicorn

    from .serve import EditService, create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    token = args.token or os.environ.get("HOREN_TOKEN") or None
    editor = open_editor(args)
    service = EditService(editor, args.edits)
    print(f"horen serve: {len(editor.edits)} {editor.method} edits from {args.edits} on "
          f"{editor.model_name}; http://{args.host}:{args.port}"
          + ("" if token else "  (READ-ONLY: no --token or HOREN_TOKEN, edits are refused)"),
          flush=True)
    uvicorn.run(create_app(service, token), host=args.host, port=args.port, access_log=False,
                log_level="warning")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


def _mount(sub, name: str, module: str, help_text: str) -> None:
    """Mount a subcommand whose module provides ``add_arguments`` and ``run``."""
    try:
        mod = importlib.import_module(f"horen.{module}")
        mod.add_arguments, mod.run  # noqa: B018
    except (ImportError, AttributeError) as err:  # an optional dependency is missing
        p = sub.add_parser(name, help=f"{help_text} (unavailable: {err})")
        p.set_defaults(func=lambda a, e=err: sys.exit(f"horen {name}: {e}"))
        return
    p = sub.add_parser(name, help=help_text)
    mod.add_arguments(p)
    p.set_defaults(func=mod.run)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", help="HF model id or directory (default: the embedded SmolLM2)")
    common.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    common.add_argument("--dtype", help="float32, bfloat16, float16 (default by device)")
    common.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    edits = argparse.ArgumentParser(add_help=False)
    edits.add_argument("--edits", default=DEFAULT_EDITS, help="edit-set directory")
    edits.add_argument("--method", help="editing method for a new edit set (default horen)")

    parser = argparse.ArgumentParser(prog="horen", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("edit", parents=[common, edits], help="apply edits, save the edit set")
    p.add_argument("--prompt")
    p.add_argument("--target")
    p.add_argument("--subject", help="the subject span in the prompt (horen-entity keys on it; "
                   "default: inferred, see horen.subject)")
    p.add_argument("--from", dest="from_file", help="a dataset file of edits (JSON/JSONL/CSV)")
    p.add_argument("--skip-bad", action="store_true", help="skip malformed records")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="method setting")
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser("generate", parents=[common, edits], help="answer with the edited model")
    p.add_argument("--prompt", action="append", required=True, help="repeat for several")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("edits", parents=[common, edits], help="list or remove (roll back) edits")
    p.add_argument("action", choices=["list", "remove"])
    p.add_argument("id", type=int, nargs="?", help="edit id to remove")
    p.add_argument("--cascade", action="store_true", help="also remove edits built on it")
    p.set_defaults(func=cmd_edits)

    p = sub.add_parser("serve", parents=[common, edits],
                       help="serve the edited model over HTTP (OpenAI-compatible) with live edits")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default: localhost only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", help="bearer token for writes (default: $HOREN_TOKEN; none = "
                   "read-only)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="method setting of a new edit set")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", parents=[common], help="edit the embedded model, show before/after")
    p.add_argument("--n", type=int, default=10, choices=range(1, 11), metavar="1..10",
                   help="number of built-in edits")
    p.add_argument("--method", default="horen-entity", choices=["horen", "horen-entity"],
                   help="the codebook editor shown (horen: the paper's, whose pooled keys also "
                   "catch some same-relation controls)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("calibrate", parents=[common], help="choose tau for a model")
    p.add_argument("--dataset", default="zsre")
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--taus", type=float, nargs="+")
    p.add_argument("--pool-ratios", type=float, nargs="+")
    p.add_argument("--method", default="horen", choices=["horen", "horen-entity"],
                   help="horen: sweep tau (and rho); horen-entity: anchor layer x tau x anchor_tau")
    p.add_argument("--anchor-layers", type=int, nargs="+", help="horen-entity anchor layers")
    p.add_argument("--anchor-taus", type=float, nargs="+", help="horen-entity anchor thresholds")
    p.add_argument("--question-taus", type=_tau_or_off, nargs="+",
                   help="horen-entity question-gate thresholds, 'off' = no gate (default: off "
                   "and the method's default); entries get the gate by the question_gate rule")
    p.add_argument("--anchor-tokens", default="last", choices=["last", "all"],
                   help="horen-entity anchors: the subject's last token, or all its tokens")
    p.add_argument("--background-tokens", type=int, default=None,
                   help="horen-entity background text per anchor threshold (0: off; default: "
                   "the method's)")
    p.add_argument("--offset", type=int, default=0, help="skip the first K records (held out)")
    p.add_argument("--chat", action="store_true")
    p.add_argument("--data-root")
    p.add_argument("--edits", help="start a new edit set here with the chosen settings")
    p.set_defaults(func=cmd_calibrate)

    _mount(sub, "bench", "bench", "run a benchmark: sequential edits, scored at checkpoints")
    _mount(sub, "report", "report", "tables and plots from results files")
    _mount(sub, "bench-speed", "speed", "reference loop vs the fast path: edit and eval speedups")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _set_threads(getattr(args, "threads", None))
    try:
        return args.func(args) or 0
    except (ValueError, KeyError, FileNotFoundError) as err:
        print(f"horen {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
