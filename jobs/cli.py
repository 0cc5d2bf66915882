"""The `mlabatch` command line: demo, embed, convert, models prepare."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from mlabatch.jobs.config import SettingsError, load_settings

DESCRIPTION = """\
Turn a Delta table of documents into a Delta table of embeddings with Spark.

Settings come from the packaged conf/local.yml, overlaid by --conf files (or the names dev, prod),
then single keys from --set section.key=value. Start with `mlabatch demo`.
"""

EXAMPLES = """\
examples:
  mlabatch demo                                   sample table -> embeddings, all local
  mlabatch models prepare                         register the bundled MiniLM in local MLflow
  mlabatch embed --set source.table=data/my_docs --set source.text_column=body
  mlabatch embed --conf my_settings.yml
  mlabatch convert --set convert.d_c=256           all-MiniLM-L6-v2 -> MLA, report, register
  mlabatch convert --set convert.source=smollm2 --set convert.d_c=256 --set convert.d_rope=64 \
                   --set convert.output_dir=data/models/smollm2-mla --set convert.name=smollm2-mla
"""


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--conf", action="append", default=[], metavar="NAME|FILE",
                        help="a settings overlay: dev, prod, or a YAML file (repeatable, later wins)")
    common.add_argument("--set", action="append", default=[], dest="overrides", metavar="SECTION.KEY=VALUE",
                        help="override one setting, e.g. --set embed.max_tokens=128 (repeatable)")
    common.add_argument("-q", "--quiet", action="store_true", help="print only the final summary")

    parser = argparse.ArgumentParser(prog="mlabatch", description=DESCRIPTION, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("demo", parents=[common], help="embed the sample documents table end to end")
    commands.add_parser("embed", parents=[common], help="embed new or changed documents of source.table")
    commands.add_parser("convert", parents=[common],
                        help="convert a model to MLA (convert.* settings), report fidelity, register it")
    models = commands.add_parser("models", help="manage models in the MLflow registry")
    models_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    models_commands.add_parser("prepare", parents=[common],
                               help="register the bundled all-MiniLM-L6-v2 as model.name@model.alias")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mlabatch` script; returns the process exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="mlabatch: %(message)s", stream=sys.stderr)
    for noisy in ("mlflow", "py4j", "alembic", "urllib3", "httpx", "transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models come from local directories or MLflow
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        settings = load_settings(args.conf, args.overrides)
        if args.command == "demo":
            from mlabatch.jobs.demo import run_demo

            print(run_demo(settings))
        elif args.command == "convert":
            from mlabatch.jobs.convert import run_convert, summary as convert_summary

            model, report = run_convert(settings)
            print(convert_summary(model, report, settings))
        elif args.command == "embed":
            from mlabatch.jobs.embed import run_embed, summary

            stats, run_id = run_embed(settings)
            print(summary(stats, settings, run_id))
        else:
            from mlabatch.jobs.models import prepare

            model = prepare(settings)
            print(f"registered {model.version} as models:/{settings.model.name}@{settings.model.alias}")
    except SettingsError as err:
        print(f"mlabatch: {err}", file=sys.stderr)
        return 2
    except (LookupError, ValueError, FileNotFoundError) as err:
        print(f"mlabatch: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
