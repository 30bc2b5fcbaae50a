"""The flags that say what to generate, and the requests built from them: a
SubmitJob request (submit), a CreateBulkJob request from an items file (bulk
create), and either one as the request a schedule or template holds."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf import json_format
from rich.console import Console

from genjobs.client.cli.shared import Mode, Options, fail
from genjobs.client.client import params
from genjobs.v1 import bulk_pb2, jobs_pb2


def _parse_extra(pairs: list[str], errors: Console) -> dict[str, str]:
    extra = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            fail(errors, f"--extra {pair!r}: write it as KEY=VALUE")
        extra[key] = value
    return extra


def _read_json(path: Path, errors: Console) -> Any:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
        return json.loads(text)
    except OSError as exc:
        fail(errors, f"cannot read {path}: {exc.strerror}")
    except json.JSONDecodeError as exc:
        fail(errors, f"{path} is not JSON: {exc}")


ModeFlag = Annotated[
    Mode | None,
    typer.Option("--mode", "-m", metavar="MODE", help="topic, keywords, trends or spin [default: topic]"),
]
TopicFlag = Annotated[str, typer.Option(help="the subject (topic and trends modes)")]
KeywordFlag = Annotated[list[str] | None, typer.Option("--keyword", "-k", help="a keyword; repeat it")]
WordsFlag = Annotated[int, typer.Option(help="words to write (0: the server default, 800)")]
ToneFlag = Annotated[str, typer.Option(help="e.g. friendly, formal")]
SourceFlag = Annotated[str, typer.Option(help="the text to rewrite (spin mode)")]
ExtraFlag = Annotated[list[str] | None, typer.Option(help="KEY=VALUE for the generator; repeat it")]
ProjectFlag = Annotated[str, typer.Option(help="a project name to group jobs by")]
AttemptsFlag = Annotated[int, typer.Option(help="attempts before failing (0: server default)")]
NotifyUrlFlag = Annotated[str, typer.Option(help="receives a signed POST when the job ends")]
NotifyEmailFlag = Annotated[str, typer.Option(help="gets a mail when the job ends")]
FileFlag = Annotated[
    Path | None,
    typer.Option("--file", "-f", help="a JSON SubmitJob request (- for stdin); flags given override it"),
]
TemplateFlag = Annotated[
    str, typer.Option("--template", help="start from this template; the flags given override it")
]


def job_request(
    opts: Options,
    file: Path | None,
    mode: Mode | None,
    generation: jobs_pb2.GenerationParams,
    **fields: Any,
) -> jobs_pb2.SubmitJobRequest:
    """A SubmitJob request from a JSON file (if any) with the flags given over it;
    the mode defaults to topic unless a template supplies it."""
    request = jobs_pb2.SubmitJobRequest()
    if file is not None:
        try:
            request = _submit_request(_read_json(file, opts.errors))
        except (TypeError, ValueError) as exc:
            fail(opts.errors, f"{file}: not a SubmitJob request: {exc}")
    template = fields.get("template") or request.template
    if mode is not None or not (request.mode or template):
        request.mode = jobs_pb2.Mode.Value("MODE_" + (mode or Mode.topic).value.upper())
    request.params.MergeFrom(generation)
    for name, value in fields.items():
        if value:
            setattr(request, name, value)
    return request


def generation_params(
    opts: Options,
    topic: str,
    keyword: list[str] | None,
    word_count: int,
    tone: str,
    source_text: str,
    extra: list[str] | None,
) -> jobs_pb2.GenerationParams:
    """The GenerationParams of the generation flags (submit, schedule create, template save)."""
    return params(
        topic=topic,
        keywords=keyword or [],
        word_count=word_count,
        tone=tone,
        source_text=source_text,
        extra=_parse_extra(extra or [], opts.errors),
    )


def _submit_request(data: Any) -> jobs_pb2.SubmitJobRequest:
    """A SubmitJob request from its JSON form, accepting "topic" as well as "MODE_TOPIC"."""
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    mode = data.get("mode")
    if isinstance(mode, str) and not mode.upper().startswith("MODE_"):
        data = {**data, "mode": "MODE_" + mode.upper()}
    return json_format.ParseDict(data, jobs_pb2.SubmitJobRequest())


ITEM_FIELDS = ("topic", "keywords", "word_count", "tone", "source_text", "extra")


def read_items(path: Path) -> list[dict[str, Any]]:
    """Bulk items from CSV (a header row naming the fields; keywords split on ;)
    or JSON lines (one object per line). Raises ValueError naming the bad line."""
    text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv" or (str(path) != "-" and not text.lstrip().startswith("{")):
        return [_csv_item(row, n) for n, row in enumerate(csv.DictReader(text.splitlines()), start=2)]
    items = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"line {n}: not JSON: {exc.msg}") from None
        if not isinstance(item, dict) or set(item) - set(ITEM_FIELDS):
            raise ValueError(f"line {n}: expected an object with fields among {', '.join(ITEM_FIELDS)}")
        items.append(item)
    return items


def _csv_item(row: dict[str, str], line: int) -> dict[str, Any]:
    item: dict[str, Any] = {"extra": {}}
    for name, value in row.items():
        value = (value or "").strip()
        if name is None or not value:
            continue
        if name == "keywords":
            item["keywords"] = [k.strip() for k in value.split(";") if k.strip()]
        elif name == "word_count":
            if not value.isdigit():
                raise ValueError(f"line {line}: word_count {value!r} is not a whole number")
            item["word_count"] = int(value)
        elif name in ITEM_FIELDS:
            item[name] = value
        else:
            item["extra"][name] = value  # any other column goes to the generator
    return item


def bulk_request(
    opts: Options, file: Path | None, mode: Mode | None, **fields: Any
) -> bulk_pb2.CreateBulkJobRequest:
    """A CreateBulkJob request from an items file (if any) and the flags given;
    the mode defaults to topic unless a template supplies it."""
    items: list[dict[str, Any]] = []
    if file is not None:
        try:
            items = read_items(file)
        except OSError as exc:
            fail(opts.errors, f"cannot read {file}: {exc.strerror}")
        except ValueError as exc:
            fail(opts.errors, f"{file}: {exc}")
    elif not fields.get("template"):
        fail(opts.errors, "give an items file (CSV or JSON lines), or --template NAME")
    mode_text = mode.value if mode else "" if fields.get("template") else Mode.topic.value
    request = bulk_pb2.CreateBulkJobRequest(items=[params(**item) for item in items])
    if mode_text:
        request.mode = jobs_pb2.Mode.Value("MODE_" + mode_text.upper())
    for name, value in fields.items():
        if value:
            setattr(request, name, value)
    return request


def stored_request(
    opts: Options,
    items: Path | None,
    file: Path | None,
    mode: Mode | None,
    generation: jobs_pb2.GenerationParams,
    **fields: Any,
) -> dict[str, Any]:
    """The request a schedule or template holds, from the submit flags: a
    CreateBulkJob request with --items, else a SubmitJob request."""
    if items is not None:
        bulk_fields = {k: v for k, v in fields.items() if k in ("project", "notify_url", "notify_email")}
        return {"bulk_job": bulk_request(opts, items, mode, **bulk_fields)}
    return {"job": job_request(opts, file, mode, generation, **fields)}


BulkItemsFlag = Annotated[
    Path | None, typer.Option("--items", help="a bulk job's items (CSV or JSON lines) instead of one job")
]
