"""The `mlabatch` command line: demo, models prepare, embed, convert, generate, kernels build, run."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from mlabatch.jobs.config import load_settings
from mlabatch.jobs.settings_help import settings_help
from mlabatch.pipelines.errors import CannotRunError, SettingsError

DESCRIPTION = """\
Turn a Delta table of documents into a Delta table of embeddings, or of prompts into generated text,
with Spark.

Settings come from the packaged conf/local.yml, overlaid by --conf files (or the names dev, prod),
then single keys from --set section.key=value; `mlabatch COMMAND --help` lists a command's settings.
Everything is checked before Spark starts work. Start with `mlabatch demo`.
"""

EXAMPLES = """\
examples:
  mlabatch demo                                   sample table -> embeddings, all local
  mlabatch models prepare                         register the bundled MiniLM in local MLflow
  mlabatch embed --set source.table=data/my_docs --set source.text_column=body
  mlabatch embed --conf my_settings.yml
  mlabatch generate --set generate.model_uri=data/models/smollm2-mla --set generate.source_table=data/prompts
  mlabatch convert --set convert.d_c=256           all-MiniLM-L6-v2 -> MLA, report, register
  mlabatch run embed_documents --target dev --param source_table=main.docs.pages
  mlabatch convert --set convert.source=smollm2 --set convert.d_c=256 --set convert.d_rope=64 \\
                   --set convert.output_dir=data/models/smollm2-mla --set convert.name=smollm2-mla

exit codes: 0 done, 1 cannot run as set up (a missing table, a model of the wrong kind, a target of
another shape, MLflow unreachable, ...), 2 invalid settings. The message names the setting to fix.
"""

# Subcommands that take settings: (help line, sections their --help lists, a --set example, a working example).
SETTINGS_COMMANDS = {
    "demo": ("embed the sample documents table end to end (creating it if missing)",
             ["source", "target", "model", "embed", "mlflow", "spark"], "embed.max_tokens=128",
             "mlabatch demo"),
    "embed": ("embed new or changed documents of source.table",
              ["source", "target", "model", "embed", "mlflow", "spark"], "embed.max_tokens=128",
              "mlabatch embed --set source.table=data/tables/documents "
              "--set target.table=data/tables/embeddings_128 --set embed.max_tokens=128"),
    "generate": ("continue new or changed prompts of generate.source_table with an MLA decoder",
                 ["generate", "mlflow", "spark"], "generate.max_new_tokens=64",
                 "mlabatch generate --set generate.model_uri=data/models/smollm2-mla "
                 "--set generate.source_table=data/tables/prompts --set generate.max_new_tokens=64"),
    "convert": ("convert a model to MLA (convert.* settings), report fidelity, register it",
                ["convert", "mlflow"], "convert.d_c=128",
                "mlabatch convert --set convert.method=exact --set convert.output_dir=data/models/minilm-mla-exact "
                "--set convert.name=minilm-mla-exact"),
    "prepare": ("register the bundled all-MiniLM-L6-v2 as model.name@model.alias",
                ["model", "mlflow"], "model.alias=candidate",
                "mlabatch models prepare --set model.name=my-minilm"),
}


def _add_settings_command(commands, name: str) -> None:
    """A subcommand with --conf, --set and -q whose --help lists its settings and one working example."""
    summary, sections, set_example, example = SETTINGS_COMMANDS[name]
    command = commands.add_parser(name, help=summary, description=summary,
                                  epilog=f"{settings_help(sections)}\n\nexample:\n  {example}",
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    command.add_argument("--conf", action="append", default=[], metavar="NAME|FILE",
                         help="a settings overlay: dev, prod, or a YAML file (repeatable, later wins)")
    command.add_argument("--set", action="append", default=[], dest="overrides", metavar="SECTION.KEY=VALUE",
                         help=f"override one setting, e.g. --set {set_example} (repeatable)")
    command.add_argument("-q", "--quiet", action="store_true",
                         help="print only the final summary (and errors): no progress, no Spark warnings")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlabatch", description=DESCRIPTION, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in ("demo", "embed", "generate", "convert"):
        _add_settings_command(commands, name)
    models = commands.add_parser("models", help="manage models in the MLflow registry")
    models_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    _add_settings_command(models_commands, "prepare")
    kernels = commands.add_parser("kernels", help="the MLA decode kernel")
    kernels_commands = kernels.add_subparsers(dest="kernels_command", required=True, metavar="ACTION")
    kernels_commands.add_parser("build", help="compile or load the CUDA kernel now; print the active backend")
    run = commands.add_parser("run", help="start a deployed Databricks job and follow it to the end")
    run.add_argument("job", help="bundle job key: convert_model, embed_documents, generate_text")
    run.add_argument("--target", default="dev", help="bundle target it was deployed to (default: dev)")
    run.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help="job parameter, e.g. --param source_table=main.docs.pages (repeatable)")
    run.add_argument("--profile", default=None, help="~/.databrickscfg profile (default: standard auth)")
    run.add_argument("--timeout", type=float, default=4 * 3600, help="seconds to follow the run (default 4 h)")
    return parser


def _run_command(args: argparse.Namespace) -> int:
    """`mlabatch run`: no settings needed, only Databricks auth."""
    from mlabatch.jobs.run import RunError, run_job, workspace_client

    params = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"mlabatch: --param {item!r}: write NAME=VALUE", file=sys.stderr)
            return 2
        params[name] = value
    try:
        result = run_job(workspace_client(args.profile), args.job, args.target, params, timeout_s=args.timeout)
    except RunError as err:
        print(f"mlabatch: {err}", file=sys.stderr)
        return 1
    print(f"run {result.run_id} {result.result_state}: {result.url}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mlabatch` script; returns the process exit code."""
    args = _parser().parse_args(argv)
    quiet = getattr(args, "quiet", False)
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="mlabatch: %(message)s", stream=sys.stderr)
    for noisy in ("py4j", "alembic", "urllib3", "httpx", "transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")  # MLflow sets its own level when imported
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models come from local directories or MLflow
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if args.command == "run":
        return _run_command(args)
    if args.command == "kernels":
        from mlabatch.jobs.kernels_cmd import build_kernels, report

        print(report(build_kernels()))
        return 0
    try:
        settings = load_settings(args.conf, args.overrides)
        if args.command == "demo":
            from mlabatch.jobs.demo import run_demo

            print(run_demo(settings, quiet))
        elif args.command == "convert":
            from mlabatch.jobs.convert import run_convert, summary as convert_summary

            model, report = run_convert(settings)
            print(convert_summary(model, report, settings))
        elif args.command == "generate":
            from mlabatch.jobs.generate import run_generate, summary as generate_summary

            stats, run_id = run_generate(settings, quiet=quiet)
            print(generate_summary(stats, settings, run_id))
        elif args.command == "embed":
            from mlabatch.jobs.embed import run_embed, summary

            stats, run_id = run_embed(settings, quiet=quiet)
            print(summary(stats, settings, run_id))
        else:
            from mlabatch.jobs.models import prepare

            model = prepare(settings)
            print(f"registered {model.version} as models:/{settings.model.name}@{settings.model.alias}")
    except SettingsError as err:
        print(f"mlabatch: {err}", file=sys.stderr)
        return 2
    except (CannotRunError, LookupError, ValueError, FileNotFoundError) as err:
        # CannotRunError from the checks; the others from lower layers, worded the same way: a missing
        # table or model (LookupError), a source column or a conversion request that cannot work (ValueError).
        print(f"mlabatch: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
